"""Panacea-DPO: one DPO loss per preference dimension, aggregated under a sampled lambda (Panacea §5, HH-DPO).

    deepspeed rlhf/train_dpo.py --config configs/<x>.yaml [--key value ...]

For each dimension i the same prompt has its own preferred/rejected responses (PKU-SafeRLHF: ``better_response_id``
for helpful, ``safer_response_id`` for harmless; generic: one chosen/rejected column pair per dimension):

    L_i = -log sigmoid(beta * [(log pi - log pi_ref)(y_w^i) - (log pi - log pi_ref)(y_l^i)])

aggregated by the registry PPO uses (``ls``: sum_i lambda_i L_i; ``tche``: max_i lambda_i L_i). pi_ref is the same
network with the adapter off. Output: ``output_dir/policy/`` (the run format ``evaluate.py`` reads).
"""
from __future__ import annotations

from typing import Optional

from rlhf.runtime.cli import cli
from rlhf.training.dpo import DPOConfig, train
from rlhf.training.loop import dry_run


def main(argv: Optional[list[str]] = None) -> None:
    cli(DPOConfig, train, __doc__, argv, dry_run_fn=dry_run)


if __name__ == "__main__":
    main()
