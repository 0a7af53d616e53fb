"""Placeholder main job until the quickstart lands: the Panacea adapter on a tiny offline model.

Builds a tiny Llama and a local tokenizer, applies SVD-LoRA, and shows that (1) at init the adapter leaves the
model unchanged, (2) once its singular values are non-zero, the next-token distribution moves with lambda, and
(3) the merged model for one lambda matches the adapted one.
"""
import torch

from rlhf.svd_lora import SVDLoRAConfig, apply_svd_lora, count_parameters, merge_and_unload, set_preference, \
    svd_lora_layers
from rlhf.tiny import build_tokenizer, tiny_causal_lm


def main() -> None:
    tok = build_tokenizer(vocab_size=300)
    model = tiny_causal_lm("llama", vocab_size=len(tok))
    ids = tok(["How do I bake bread?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base = model(input_ids=ids).logits[0, -1]
    apply_svd_lora(model, SVDLoRAConfig(rank=8, pref_dim=2))
    trainable, total = count_parameters(model)
    print(f"SVD-LoRA applied: {trainable:,} trainable of {total:,} parameters "
          f"({sum(1 for _ in svd_lora_layers(model))} layers)")
    set_preference(model, [0.5, 0.5])
    with torch.no_grad():
        print(f"at init, max |logit change| = {(model(input_ids=ids).logits[0, -1] - base).abs().max():.2e}")
        for _, layer in svd_lora_layers(model):
            layer.lora_sigma.fill_(0.05)
            layer.lora_s.fill_(0.2)
        for lam in ([1.0, 0.0], [0.5, 0.5], [0.0, 1.0]):
            set_preference(model, lam)
            logits = model(input_ids=ids).logits[0, -1]
            merged = merge_and_unload(model, lam)(input_ids=ids).logits[0, -1]
            top = tok.convert_ids_to_tokens(int(logits.argmax()))
            print(f"lambda={lam}: top next token {top!r}, KL(base||adapted)="
                  f"{torch.nn.functional.kl_div(logits.log_softmax(-1), base.log_softmax(-1), log_target=True, reduction='sum'):.4f}, "
                  f"|merged - adapted| = {(merged - logits).abs().max():.1e}")


if __name__ == "__main__":
    main()
