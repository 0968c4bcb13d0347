"""Compatibility layers: scripts written for another library, run on distill_toolkit's one loop.

- :mod:`distill_toolkit.compat.textbrewer`: TextBrewer 0.2.1's public API. A TextBrewer script
  changes one import line (``import distill_toolkit.compat.textbrewer as textbrewer``) and runs;
  see ``docs/migrating_from_textbrewer.md``.
"""
