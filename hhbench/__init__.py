"""The embedded helpful-harmless(-concise) benchmark: a seeded task with ground-truth oracles (``task``), the front
report (``report``) and the tiny locally built models and tokenizers that tests, CI and the quickstart use
(``tiny``). Not part of the pipeline in ``rlhf/``: it exercises it end to end, offline, on a CPU."""
