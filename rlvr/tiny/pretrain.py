"""Build the tiny base model that ships in ``rlvr/tiny/model``: tokenizer, pre-training, save.

A byte-level BPE tokenizer (digits split one per token) is trained with ``tokenizers`` on the
generated corpus of ``rlvr.tiny.task``, then a small Llama decoder is pre-trained on that corpus with
plain next-token loss over whole documents (prompt and response alike: it is a base model, never
fine-tuned on responses), and both are saved with ``save_pretrained`` so transformers and vLLM load
them like any hub checkpoint. The shipped model was made on one GPU (``pretrain_args.json`` in the
model directory records the exact arguments); two CPU cores get a weaker but usable model in the
same time:

    python -m rlvr.tiny.pretrain --out_dir rlvr/tiny/model --device cuda --batch_seqs 128 --n_docs 1000000 --minutes 6
    python -m rlvr.tiny.pretrain --out_dir /tmp/tiny --threads 1 --minutes 15      # CPU

``--task_module`` names another corpus of ``rlvr.tiny`` (one with ``task.py``'s ``problems`` and ``corpus``),
and ``--init`` continues from a saved model, with its tokenizer, instead of starting afresh: the tool demo's
model (``rlvr/tiny/tool_model``) is the shipped one, pre-trained further on ``rlvr.tiny.tool_task``'s corpus
on one CPU thread, in two runs (its ``pretrain_args.json`` records both). After the first, the model used the
tool's style but copied the factors wrongly (print(248 * 87) for 237 * 84); copying three-digit numbers came in
the second, with its loss falling from 0.38 to 0.31:

    python -m rlvr.tiny.pretrain --task_module tool_task --init rlvr/tiny/model --out_dir /tmp/tool_stage1 \\
        --template_frac 0 --lr 1e-3 --threads 1 --minutes 20
    python -m rlvr.tiny.pretrain --task_module tool_task --init /tmp/tool_stage1 --out_dir rlvr/tiny/tool_model \\
        --template_frac 0 --lr 2e-3 --n_docs 300000 --threads 1 --minutes 25
"""

from __future__ import annotations

import importlib
import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlvr.templates import R1_ZERO
from rlvr.tiny import task

EOS = "<|endoftext|>"


def build_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=None)


def main(
    out_dir: str = "rlvr/tiny/model",
    n_docs: int = 120_000,
    vocab_size: int = 384,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    seq_len: int = 256,
    batch_seqs: int = 32,
    lr: float = 3e-3,
    minutes: float = 12.0,
    template_frac: float = 0.3,
    seed: int = 0,
    threads: int = 0,
    device: str = "cpu",
    task_module: str = "task",
    init: str = "",
):
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    source = task if task_module == "task" else importlib.import_module(f"rlvr.tiny.{task_module}")
    test = {p["question"] for p in source.problems(500, seed + 1)}  # the held-out problems of its main()
    # Most documents carry only "User: .. Assistant:", so compute goes into the arithmetic, not into
    # re-reading the 90-token R1-Zero preamble; enough carry it for the model to continue it well.
    rng = random.Random(seed)
    docs = source.corpus(
        n_docs,
        seed + 3,
        exclude=test,
        prompt_fn=lambda q: R1_ZERO.format(question=q) if rng.random() < template_frac else f"User: {q} Assistant:",
    )
    tokenizer = PreTrainedTokenizerFast.from_pretrained(init) if init else build_tokenizer(docs[:20_000], vocab_size)
    ids = []
    for d in tokenizer(docs)["input_ids"]:
        ids.extend(d + [tokenizer.eos_token_id])
    data = torch.tensor(ids[: len(ids) // seq_len * seq_len]).view(-1, seq_len).to(device)
    print(f"corpus: {len(docs)} docs, {data.numel() / 1e6:.1f}M tokens, {len(ids) / len(docs):.0f} tokens/doc")

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    model = (LlamaForCausalLM.from_pretrained(init) if init else LlamaForCausalLM(config)).to(device)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator(device).manual_seed(seed)
    start, step, budget = time.time(), 0, minutes * 60
    # The schedule is over wall time so the script fits its budget on any machine.
    while (elapsed := time.time() - start) < budget:
        frac = elapsed / budget
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        batch = data[torch.randint(len(data), (batch_seqs,), generator=g, device=device)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} {elapsed:.0f}s", flush=True)
        step += 1

    out = Path(out_dir)
    model = model.cpu()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "pretrain_args.json").write_text(
        json.dumps(
            {
                "n_docs": n_docs,
                "vocab_size": vocab_size,
                "hidden": hidden,
                "layers": layers,
                "heads": heads,
                "seq_len": seq_len,
                "batch_seqs": batch_seqs,
                "lr": lr,
                "minutes": minutes,
                "template_frac": template_frac,
                "seed": seed,
                "device": device,
                "steps": step,
                "final_loss": round(loss.item(), 4),
            }
            | ({"task_module": task_module} if task_module != "task" else {})
            | ({"init": init} if init else {}),
            indent=1,
        )
    )
    print(f"saved to {out} after {step} steps")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
