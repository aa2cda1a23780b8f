"""Checks a reproduced pipeline: every out ``dvc.yaml`` declares exists, and nothing is stale.

    python scripts/check_outputs.py [--up-to-date] [--param KEY=VALUE --expect STAGE,...]

* Always: each stage's ``outs`` (``${...}`` resolved from ``params.yaml``) exists; a
  directory must not be empty.
* ``--up-to-date``: ``dvc status`` reports nothing to do (a second ``dvc repro`` would run
  no stage).
* ``--git-outs``: only print the ``cache: false`` outs (the ones kept in git), one a line.
* ``--param KEY=VALUE --expect A,B`` (``all``: every stage): sets the (dotted) params key
  in a scratch copy of ``params.yaml``, asks ``dvc status`` which stages changed, runs
  exactly those plus everything downstream of them in the stage graph (``dvc repro --dry``
  semantics), checks that set equals ``--expect``, and restores ``params.yaml``.

Exit status 0 when every check passes, 1 otherwise (each failure is printed).
Run by ``.ci/run`` after ``dvc repro``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
_VAR = re.compile(r"\$\{\s*([\w.-]+)\s*\}")


def _lookup(params: dict, dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        node = node[part]
    return node


def _resolve(text: str, params: dict) -> str:
    return _VAR.sub(lambda m: str(_lookup(params, m.group(1))), text)


def _names(entries: list) -> list[str]:
    """Paths of a stage's ``deps``/``outs`` list (strings or ``{path: options}``)."""
    out = []
    for e in entries or []:
        out.extend([e] if isinstance(e, str) else list(e))
    return out


def _expand_foreach(pipeline: dict, params: dict) -> dict[str, tuple[dict, dict]]:
    """``{stage name: (definition, extra variables)}``; a ``foreach`` stage becomes one stage
    per item, named ``stage@key`` as DVC names them, with ``key``/``item`` bound."""
    out = {}
    for name, st in pipeline["stages"].items():
        if "foreach" not in st:
            out[name] = (st, {})
            continue
        items = st["foreach"]
        if isinstance(items, str):
            items = _lookup(params, _VAR.fullmatch(items.strip()).group(1))
        pairs = items.items() if isinstance(items, dict) else ((i, i) for i in items)
        for key, item in pairs:
            out[f"{name}@{key}"] = (st["do"], {"key": key, "item": item})
    return out


def load_stages(root: Path = ROOT) -> dict[str, dict]:
    """``{stage: {"deps": [...], "outs": [...], "params": [...]}}`` with paths resolved."""
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    params = yaml.safe_load((root / "params.yaml").read_text()) or {}
    stages = {}
    for name, (st, local) in _expand_foreach(pipeline, params).items():
        scope = {**params, **local}
        stages[name] = {
            "deps": [_resolve(p, scope) for p in _names(st.get("deps"))],
            "outs": [
                _resolve(p, scope)
                for key in ("outs", "metrics", "plots")
                for p in _names(st.get(key))
            ],
            "params": [p if isinstance(p, str) else next(iter(p)) for p in st.get("params", [])],
        }
    return stages


def git_outs(root: Path = ROOT) -> list[str]:
    """The outs declared with ``cache: false`` (kept in git rather than the DVC cache)."""
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    params = yaml.safe_load((root / "params.yaml").read_text()) or {}
    return [
        _resolve(path, {**params, **local})
        for st, local in _expand_foreach(pipeline, params).values()
        for e in st.get("outs", [])
        if isinstance(e, dict)
        for path, opts in e.items()
        if (opts or {}).get("cache", True) is False
    ]


def missing_outputs(root: Path = ROOT) -> list[str]:
    """``"stage: path (why)"`` for every declared out that is missing or an empty folder."""
    bad = []
    for name, st in load_stages(root).items():
        for out in st["outs"]:
            p = root / out
            if not p.exists():
                bad.append(f"{name}: {out} (missing)")
            elif p.is_dir() and not any(p.iterdir()):
                bad.append(f"{name}: {out} (empty directory)")
    return bad


def downstream(stages: dict[str, dict], changed: set[str]) -> set[str]:
    """``changed`` plus every stage that depends (transitively) on one of their outs."""
    result = set(changed)
    grew = True
    while grew:
        grew = False
        outs = {o for s in result for o in stages[s]["outs"]}
        for name, st in stages.items():
            if name in result:
                continue
            if any(d == o or d.startswith(o.rstrip("/") + "/") for d in st["deps"] for o in outs):
                result.add(name)
                grew = True
    return result


def dvc_status(root: Path = ROOT) -> dict:
    r = subprocess.run(
        ["dvc", "status", "--json"], cwd=root, capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(f"dvc status failed ({r.returncode}): {r.stderr.strip()}")
    return json.loads(r.stdout or "{}")


def _set_dotted(params: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = params
    for p in parents:
        node = node[p]
    if last not in node:
        raise KeyError(f"params.yaml has no key {dotted}")
    node[last] = value


def stages_rerun_by(key: str, value: str, root: Path = ROOT) -> set[str]:
    """The stages a ``dvc repro`` would run after setting params key ``key`` to ``value``."""
    path = root / "params.yaml"
    backup = path.with_name(".params.yaml.check-backup")
    shutil.copyfile(path, backup)
    try:
        params = yaml.safe_load(path.read_text())
        _set_dotted(params, key, yaml.safe_load(value))
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        changed = {k.split(":")[-1] for k in dvc_status(root)}  # "dvc.yaml:stage" or "stage"
    finally:
        shutil.move(backup, path)
    return downstream(load_stages(root), changed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--up-to-date", action="store_true", help="dvc status must be clean")
    ap.add_argument("--param", action="append", default=[], help="KEY=VALUE to try")
    ap.add_argument("--expect", action="append", default=[], help="stages, comma-separated")
    ap.add_argument("--git-outs", action="store_true", help="print the cache: false outs")
    args = ap.parse_args(argv)
    if args.git_outs:
        print("\n".join(git_outs()))
        return 0
    if len(args.param) != len(args.expect):
        ap.error("give one --expect per --param")
    failures = missing_outputs()
    n_outs = sum(len(s["outs"]) for s in load_stages().values())
    print(f"outs declared in dvc.yaml: {n_outs}; missing: {len(failures)}")
    if args.up_to_date:
        status = dvc_status()
        print(f"dvc status: {'up to date' if not status else json.dumps(status)}")
        if status:
            failures.append(f"pipeline not up to date after dvc repro: {json.dumps(status)}")
    for kv, expect in zip(args.param, args.expect):
        key, _, value = kv.partition("=")
        got = stages_rerun_by(key, value)
        want = set(load_stages()) if expect == "all" else {s for s in expect.split(",") if s}
        print(f"changing {key} reruns: {', '.join(sorted(got)) or 'nothing'}")
        if got != want:
            failures.append(f"changing {key} reruns {sorted(got)}, expected {sorted(want)}")
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
