"""A small agent transformer whose output does not depend on the number of agents.

Agents attend to each other in ``num_layers`` pre-LayerNorm self-attention blocks
(padded agents are masked as keys and zeroed as tokens), then a fixed set of learned
queries attends over the variable set of agent tokens plus one learned always-valid null
token (so a scene without other agents is well defined). The pooled queries are
flattened to one vector. The result is invariant to agent order and to padding, so a
policy trained with 32 agent slots evaluates with 128 (the APG multi-agent recipe).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffdrive.sim.datatypes import Array


class _FeedForward(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return nn.Dense(self.width)(nn.relu(nn.Dense(2 * self.width)(x)))


class SelfAttentionBlock(nn.Module):
    """Pre-LN self-attention + feed-forward; padded tokens are masked and zeroed.

    ``tokens`` ``(..., N, W)``, ``mask`` ``(..., N)`` -> ``(..., N, W)``.
    """

    width: int
    num_heads: int

    @nn.compact
    def __call__(self, tokens: Array, mask: Array) -> Array:
        attn_mask = nn.make_attention_mask(mask, mask)  # (..., 1, N, N)
        h = nn.LayerNorm()(tokens)
        h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=self.width)(
            h, h, mask=attn_mask
        )
        x = tokens + h
        x = x + _FeedForward(self.width)(nn.LayerNorm()(x))
        return jnp.where(mask[..., None], x, 0.0)


class AgentTokens(nn.Module):
    """Embeds agents and runs the self-attention blocks (permutation-equivariant).

    ``agents`` ``(..., N, F)``, ``mask`` ``(..., N)`` -> ``(..., N, width)``.
    """

    width: int
    num_layers: int
    num_heads: int

    @nn.compact
    def __call__(self, agents: Array, mask: Array) -> Array:
        x = jnp.where(mask[..., None], nn.Dense(self.width)(agents), 0.0)
        for i in range(self.num_layers):
            x = SelfAttentionBlock(self.width, self.num_heads, name=f"block_{i}")(x, mask)
        return x


class QueryPooling(nn.Module):
    """Learned queries attend over the tokens (masked) and a learned null token.

    ``tokens`` ``(..., N, W)``, ``mask`` ``(..., N)`` -> ``(..., num_queries, W)``.
    """

    width: int
    num_heads: int
    num_queries: int

    @nn.compact
    def __call__(self, tokens: Array, mask: Array) -> Array:
        batch = tokens.shape[:-2]
        queries = self.param(
            "queries", nn.initializers.normal(1.0), (self.num_queries, self.width), tokens.dtype
        )
        null = self.param("null", nn.initializers.normal(1.0), (1, self.width), tokens.dtype)
        q = jnp.broadcast_to(queries, batch + queries.shape)
        kv = jnp.concatenate([jnp.broadcast_to(null, batch + null.shape), tokens], axis=-2)
        kv_mask = jnp.concatenate([jnp.ones(batch + (1,), bool), mask], axis=-1)
        attn_mask = nn.make_attention_mask(jnp.ones(batch + (self.num_queries,), bool), kv_mask)
        h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=self.width)(
            nn.LayerNorm()(q), nn.LayerNorm()(kv), mask=attn_mask
        )
        q = q + h
        return q + _FeedForward(self.width)(nn.LayerNorm()(q))


class AgentTransformer(nn.Module):
    """Agents ``(..., N, F)`` with ``mask`` ``(..., N)`` -> ``(..., out_width)``, any ``N``."""

    width: int
    num_layers: int
    num_heads: int
    num_queries: int
    out_width: int

    @nn.compact
    def __call__(self, agents: Array, mask: Array) -> Array:
        tokens = AgentTokens(self.width, self.num_layers, self.num_heads, name="tokens")(
            agents, mask
        )
        pooled = QueryPooling(self.width, self.num_heads, self.num_queries, name="pool")(
            tokens, mask
        )
        flat = pooled.reshape(pooled.shape[:-2] + (-1,))
        return nn.relu(nn.Dense(self.out_width)(flat))
