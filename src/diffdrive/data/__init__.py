"""Scenario data: TFRecord and WOMD readers, other real formats, the procedural set, caches."""
