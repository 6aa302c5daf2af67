"""The transformers side of `cargo xtask bench --against transformers`.

Times, in Hugging Face transformers on PyTorch eager (no torch.compile), with the given thread
count, the tasks that xtask times in infalign:

- the shipped model: the first --n-prompts prompts, --n samples each, at most --max-new-tokens new
  tokens, sampling at T = 1 (no top-k, no top-p) through `model.generate(...,
  num_return_sequences=n)`, --batch prompts per call (default: all of them in one call, as a
  transformers user would write it). Tokens are counted up to and including the first EOS, as
  infalign counts them (its rows stop at EOS, the EOS token included);
- with --gpt2-small: a GPT-2-small shape (12x768, vocab 50257, random weights), greedy decoding
  with the KV cache of --prompt-tokens random prompt tokens then --new-tokens new tokens, at batch
  1 and 16, timed over the whole generate call (prefill included), as `infalign bench` times it.

With --device cuda[:N] the models and inputs live on that GPU, each timing ends with
torch.cuda.synchronize(), and with --gpt2-small the GPU's read bandwidth is measured too (a 4 GiB
f32 buffer, or a quarter of the free memory, summed on the device, best of 5 after one warm-up)
for the bandwidth floor.

Timings exclude the Python import, the model load and one untimed warm-up generate call per model
(transformers' first generate calls are much slower than the later ones). Prints one JSON object on
stdout: {"torch", "transformers", "threads", "device", "gpu", "device_read_bandwidth",
"attn_implementation", "rows": [{"task", "tokens", "seconds", "tokens_per_s", ...}]}.
"""
import argparse
import json
import sys
import time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--model", required=True, help="the shipped model directory (Hugging Face layout)")
p.add_argument("--prompts", required=True, help='prompts JSONL of {"prompt": ...} rows')
p.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
p.add_argument("--n-prompts", type=int, default=32, help="the first N prompts of --prompts")
p.add_argument("--n", type=int, default=16, help="samples per prompt")
p.add_argument("--max-new-tokens", type=int, default=64)
p.add_argument("--batch", type=int, default=0, help="prompts per generate call (default 0: all in one call)")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--gpt2-small", action="store_true", help="also the GPT-2-small shape, batch 1 and 16")
p.add_argument("--prompt-tokens", type=int, default=128)
p.add_argument("--new-tokens", type=int, default=128)
p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
a = p.parse_args()

import torch

torch.set_num_threads(a.threads)
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

transformers.logging.set_verbosity_error()

device = torch.device(a.device)
on_gpu = device.type == "cuda"
if on_gpu and not torch.cuda.is_available():
    sys.exit(f"--device {a.device}: torch {torch.__version__} sees no CUDA device")


def sync():
    if on_gpu:
        torch.cuda.synchronize(device)

rows = []
attn = {}


def log(msg):
    print(f"transformers_bench: {msg}", file=sys.stderr, flush=True)


def shipped():
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval().to(device)
    attn["shipped"] = getattr(model.config, "_attn_implementation", None)
    tok = AutoTokenizer.from_pretrained(a.model)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.convert_ids_to_tokens(0)
    with open(a.prompts) as f:
        prompts = [json.loads(line)["prompt"] for line in f if line.strip()][: a.n_prompts]
    if not prompts:
        sys.exit(f"no prompts in {a.prompts}")
    eos = model.config.eos_token_id
    batch = a.batch if a.batch > 0 else len(prompts)

    def generate(chunk, max_new):
        enc = tok(chunk, return_tensors="pt", padding=True).to(device)
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=max_new, num_return_sequences=a.n,
                             pad_token_id=tok.pad_token_id, eos_token_id=eos)
        return out[:, enc["input_ids"].shape[1]:]

    with torch.inference_mode():
        torch.manual_seed(a.seed + 1)
        generate(prompts[:2], min(a.max_new_tokens, 8))  # warm-up, untimed
        sync()
        torch.manual_seed(a.seed)
        tokens = 0
        start = time.perf_counter()
        for i in range(0, len(prompts), batch):
            # `.tolist()` copies to the host, which waits for the device.
            for row in generate(prompts[i : i + batch], a.max_new_tokens).tolist():
                # Tokens up to and including the first EOS, as infalign counts them.
                tokens += row.index(eos) + 1 if eos in row else len(row)
        sync()
        secs = time.perf_counter() - start
    log(f"shipped model: {tokens} tokens in {secs:.2f} s")
    rows.append({"task": "shipped", "prompts": len(prompts), "n": a.n,
                 "max_new_tokens": a.max_new_tokens, "batch": batch,
                 "tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs})


def gpt2_small():
    torch.manual_seed(a.seed)
    cfg = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    model = GPT2LMHeadModel(cfg).eval().to(device)
    attn["gpt2-small"] = getattr(model.config, "_attn_implementation", None)
    # Random weights could pick EOS; never stop early: every row decodes --new-tokens tokens.
    model.generation_config.eos_token_id = None
    params = sum(t.numel() for t in model.parameters())

    def generate(batch, prompt, new):
        ids = torch.randint(0, cfg.vocab_size, (batch, prompt)).to(device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new, min_new_tokens=new, pad_token_id=0, use_cache=True)
        return batch * (out.shape[1] - prompt)

    with torch.inference_mode():
        generate(1, 8, 4)  # warm-up, untimed
        sync()
        for batch in (1, 16):
            start = time.perf_counter()
            tokens = generate(batch, a.prompt_tokens, a.new_tokens)
            sync()
            secs = time.perf_counter() - start
            log(f"gpt2-small decode batch {batch}: {tokens} tokens in {secs:.2f} s")
            rows.append({"task": "gpt2-small decode", "params": params, "batch": batch,
                         "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
                         "tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs})


def gpu_read_bandwidth():
    """Bytes per second of an f32 buffer summed on the GPU (4 GiB, or a quarter of the free
    memory when that is less): the best of 5 after a warm-up; None when it cannot be allocated."""
    free, _ = torch.cuda.mem_get_info(device)
    n = min(1 << 30, free // 16)
    try:
        x = torch.ones(n, dtype=torch.float32, device=device)
    except torch.OutOfMemoryError as e:
        log(f"{a.device} read bandwidth not measured: {e}")
        return None
    best = float("inf")
    for i in range(6):
        sync()
        start = time.perf_counter()
        x.sum().item()
        secs = time.perf_counter() - start
        if i > 0:
            best = min(best, secs)
    del x
    torch.cuda.empty_cache()
    bw = 4 * n / best
    log(f"{a.device} read bandwidth: {bw / 1e9:.0f} GB/s")
    return bw


shipped()
bandwidth = None
if a.gpt2_small:
    gpt2_small()
    if on_gpu:
        bandwidth = gpu_read_bandwidth()
json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
           "threads": torch.get_num_threads(), "device": a.device,
           "gpu": torch.cuda.get_device_name(device) if on_gpu else None,
           "device_read_bandwidth": bandwidth, "attn_implementation": attn, "rows": rows},
          sys.stdout)
print()
