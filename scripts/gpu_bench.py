"""The GPU side of the Idefics2 benchmark (scripts/gpu-bench.sh); inputs from scripts/gpu_bench_prepare.py.

    python3 gpu_bench.py setup BENCH_DIR MODEL_ROOT         # pages as PNG, full-depth random bf16 checkpoint
    python3 gpu_bench.py transformers BENCH_DIR MODEL_ROOT OUT_JSON --batch-docvqa 8 --batch-ocr 4
    python3 gpu_bench.py docpipe BIN MODEL_DIR REQUESTS OUT_PREFIX --batch 8
    python3 gpu_bench.py summary BENCH_DIR MODEL_ROOT RESULTS_DIR   # both, tokens compared, FLOP bound
    python3 gpu_bench.py check BIN FIXTURES_DIR OUT_DIR             # tiny fixtures: GPU tokens = CPU tokens

`setup` writes MODEL_ROOT/split (do_image_splitting true) and MODEL_ROOT/nosplit (same weights through
symlinks, only the processor files differ). Weights are drawn on the GPU like make_fixtures.init_weights
(O(1) activations); the lm_head rows of eos (</s>, <end_of_utterance>) and of the ids past the small
tokenizer are zero, so with ~640 random competing logits eos practically never wins and every request
runs to max_new_tokens (the summaries count the tokens actually generated anyway).
"""

import argparse
import json
import math
import os
import shutil
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

DEPTH = {"vision": 27, "perceiver": 3, "text": 32}
LAYER_PREFIX = {
    "model.vision_model.encoder.layers.": "vision",
    "model.connector.perceiver_resampler.layers.": "perceiver",
    "model.text_model.layers.": "text",
}


# GPU_BENCH_DEVICE=cpu runs the transformers part on a tiny checkpoint without a GPU, as a dry run.
DEVICE = os.environ.get("GPU_BENCH_DEVICE", "cuda")


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def write_png(path: Path, arr: np.ndarray):
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 1))
        + chunk(b"IEND", b"")
    )


def full_names(shapes: dict) -> dict:
    out = {}
    for name, shape in shapes.items():
        for prefix, tower in LAYER_PREFIX.items():
            if name.startswith(prefix + "0."):
                for i in range(DEPTH[tower]):
                    out[f"{prefix}{i}.{name[len(prefix) + 2:]}"] = shape
                break
        else:
            out[name] = shape
    return out


@torch.no_grad()
def init_tensor(name, shape, gen, vocab_live, eos_ids):
    dev, bf = DEVICE, torch.bfloat16
    t = torch.randn(shape, device=dev, dtype=torch.float32, generator=gen)
    if "norm" in name and name.endswith(".weight"):
        t = 1.0 + 0.1 * t
    elif name.endswith(".bias"):
        t = 0.1 * t
    elif name.endswith(("position_embedding.weight", "embed_tokens.weight", "latents")):
        pass
    elif name == "lm_head.weight":
        t[vocab_live:] = 0
        t[eos_ids] = 0
    else:
        t = t / math.sqrt(t[0].numel())
    return t.to(bf)


def setup(args):
    bench, root = Path(args.bench), Path(args.model_root)
    pages = np.load(bench / "pages.npz")
    (bench / "pages").mkdir(exist_ok=True)
    for name in pages.files:
        write_png(bench / "pages" / name, pages[name])
    template = bench / "template"
    split, nosplit = root / "split", root / "nosplit"
    for d in (split, nosplit):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    cfg = json.loads((template / "config.json").read_text())
    cfg["vision_config"]["num_hidden_layers"] = DEPTH["vision"]
    cfg["perceiver_config"]["resampler_depth"] = DEPTH["perceiver"]
    cfg["text_config"]["num_hidden_layers"] = DEPTH["text"]
    gen_cfg = json.loads((template / "generation_config.json").read_text())
    eos_ids = gen_cfg["eos_token_id"]
    tok = json.loads((template / "tokenizer.json").read_text())
    vocab_live = 1 + max([*tok["model"]["vocab"].values(), *(t["id"] for t in tok["added_tokens"])])
    for f in template.iterdir():
        shutil.copy(f, split / f.name)
    (split / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    shapes = full_names(json.loads((bench / "shapes.json").read_text()))
    gen = torch.Generator(device=DEVICE).manual_seed(7)
    t0 = time.time()
    shard_bytes = 4 << 30
    from safetensors.torch import save_file

    weight_map, shard, size, n = {}, {}, 0, 0
    names = sorted(shapes)
    total = 0

    def flush():
        nonlocal shard, size, n
        n += 1
        fn = f"model-{n:05d}.safetensors"
        save_file(shard, str(split / fn), metadata={"format": "pt"})
        for k in shard:
            weight_map[k] = fn
        shard, size = {}, 0

    for name in names:
        t = init_tensor(name, shapes[name], gen, vocab_live, eos_ids)
        shard[name] = t.cpu()
        size += t.numel() * 2
        total += t.numel() * 2
        if size >= shard_bytes:
            flush()
    if shard:
        flush()
    sync()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (split / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
    params = total // 2
    print(f"checkpoint: {params / 1e9:.3f} B params, {total / 1e9:.1f} GB bf16, {n} shards, {time.time() - t0:.1f} s; live vocab {vocab_live}, eos rows {eos_ids} zeroed", flush=True)

    for f in split.iterdir():
        if f.suffix == ".safetensors" or f.name == "model.safetensors.index.json":
            (nosplit / f.name).symlink_to(f)
        else:
            shutil.copy(f, nosplit / f.name)
    pre = json.loads((nosplit / "preprocessor_config.json").read_text())
    pre["do_image_splitting"] = False
    (nosplit / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    proc = json.loads((nosplit / "processor_config.json").read_text())
    if "image_processor" in proc:
        proc["image_processor"]["do_image_splitting"] = False
    (nosplit / "processor_config.json").write_text(json.dumps(proc, indent=2) + "\n")
    def total_of(pred):
        return sum(math.prod(s) for k, s in shapes.items() if pred(k))

    per_patch = ("modality_projection", "self_attn.k_proj", "self_attn.v_proj")
    count = {
        "total": params,
        "vision": total_of(lambda k: k.startswith("model.vision_model.")),
        # The modality projection runs over every patch, the perceiver's k/v projections over patches
        # and latents, the rest of the perceiver over its 64 latents only.
        "connector_per_patch": total_of(lambda k: k.startswith("model.connector.") and any(x in k for x in per_patch)),
        "connector_per_latent": total_of(lambda k: k.startswith("model.connector.") and not any(x in k for x in per_patch)),
        "text_layers": sum(math.prod(s) for k, s in shapes.items() if k.startswith("model.text_model.layers.")),
        "lm_head": math.prod(shapes["lm_head.weight"]),
    }
    (root / "params.json").write_text(json.dumps(count, indent=1) + "\n")


def load_requests(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def without_paths(messages):
    """The chat template only needs the item types; no image loading from paths."""
    return [
        {"role": m["role"], "content": [{"type": "image"} if c["type"] == "image" else c for c in m["content"]]}
        for m in messages
    ]


def transformers_bench(args):
    import transformers
    import transformers.models.idefics2.processing_idefics2 as processing
    from transformers import AutoProcessor, Idefics2ForConditionalGeneration

    # The pages are numpy arrays, which the image processor takes; the processor's load_image would
    # insist on PIL images (and PIL may be missing on the GPU machine).
    processing.load_image = lambda image: image

    bench, root = Path(args.bench), Path(args.model_root)
    pages = np.load(bench / "pages.npz")
    t0 = time.time()
    model = Idefics2ForConditionalGeneration.from_pretrained(
        root / "split", dtype=torch.bfloat16, attn_implementation="sdpa"
    ).to(DEVICE).eval()
    sync()
    results = {"transformers": transformers.__version__, "torch": torch.__version__, "load_s": time.time() - t0}
    print(f"transformers: loaded in {results['load_s']:.1f} s", flush=True)
    procs = {}
    for mode in ("split", "nosplit"):
        p = AutoProcessor.from_pretrained(root / mode)
        p.tokenizer.padding_side = "left"
        procs[mode] = p
        results[f"processor_{mode}"] = type(p.image_processor).__name__
        one = p(text=["<image>x"], images=[[pages[pages.files[0]]]], return_tensors="pt")
        m = one["pixel_attention_mask"][0].to(torch.int32)  # (crops, H, W)
        c, hh, ww = m.shape
        grid = m[:, : hh // 14 * 14, : ww // 14 * 14].reshape(c, hh // 14, 14, ww // 14, 14).amax(dim=(2, 4))
        results[f"patches_{mode}"] = grid.sum(dim=(1, 2)).tolist()
        print(f"transformers: {mode}: {type(p.image_processor).__name__}, patches per crop {results[f'patches_{mode}']}", flush=True)

    def run(proc, reqs, batch):
        n_tokens, prompt_tokens, outs = 0, 0, []
        for i in range(0, len(reqs), batch):
            chunk = reqs[i : i + batch]
            texts = [proc.apply_chat_template(without_paths(r["messages"]), add_generation_prompt=True) for r in chunk]
            images = [[pages[Path(c["path"]).name] for m in r["messages"] for c in m["content"] if c["type"] == "image"] for r in chunk]
            inputs = proc(text=texts, images=images, return_tensors="pt", padding=True).to(DEVICE)
            inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
            mnt = max(r["max_new_tokens"] for r in chunk)
            out = model.generate(**inputs, max_new_tokens=mnt, do_sample=False)
            new = out[:, inputs["input_ids"].shape[1] :].tolist()
            prompt_tokens += int(inputs["attention_mask"].sum())
            eos = model.generation_config.eos_token_id
            eos = set(eos if isinstance(eos, list) else [eos])
            for r, ids in zip(chunk, new):
                # After eos, generate pads with pad_token_id.
                cut = next((j + 1 for j, t in enumerate(ids) if t in eos), len(ids))
                outs.append({"id": r["id"], "token_ids": ids[:cut]})
                n_tokens += cut
        return n_tokens, prompt_tokens, outs

    warm = load_requests(bench / "docvqa.jsonl")[:2]
    for mode in ("split", "nosplit"):
        run(procs[mode], warm, 2)
    sync()
    deadline = time.time() + args.time_box
    for workload in args.workloads.split(","):
        batch = args.batch_ocr if workload.startswith("ocr") else args.batch_docvqa
        reqs = load_requests(bench / f"{workload}.jsonl")
        for mode in ("split", "nosplit"):
            if time.time() > deadline:
                print(f"transformers: time box reached, skipping {workload}/{mode}", flush=True)
                continue
            if DEVICE == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            t = time.time()
            n_tokens, prompt_tokens, outs = run(procs[mode], reqs, batch)
            sync()
            dt = time.time() - t
            key = f"{workload}_{mode}"
            results[key] = {
                "seconds": dt,
                "requests": len(reqs),
                "pages": len({c["path"] for r in reqs for m in r["messages"] for c in m["content"] if c["type"] == "image"}),
                "batch": batch,
                "generated_tokens": n_tokens,
                "prompt_tokens": prompt_tokens,
                "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else None,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if DEVICE == "cuda" else None,
            }
            (Path(args.out).parent / f"hf_{key}.jsonl").write_text("".join(json.dumps(o) + "\n" for o in outs))
            print(f"transformers {key}: {json.dumps(results[key])}", flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


def docpipe_bench(args):
    """Runs `docpipe generate` with DOCPIPE_LOG=debug: its "generating" line comes right after the
    model is loaded, so generate_s (that line to exit) excludes loading but includes preprocessing.
    nvidia-smi polls the GPU's used memory meanwhile."""
    import subprocess
    import threading

    smi = subprocess.Popen(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "100"],
        stdout=subprocess.PIPE, text=True,
    )
    peak = [0]

    def poll():
        for line in smi.stdout:
            if line.strip().isdigit():
                peak[0] = max(peak[0], int(line))

    threading.Thread(target=poll, daemon=True).start()
    cmd = [args.bin, "generate", "--model", args.model, "--requests", args.requests, "--out", args.out + ".jsonl",
           "--device", os.environ.get("GPU_BENCH_DOCPIPE_DEVICE", "cuda:0"), "--dtype", "bf16", "--batch-size", str(args.batch)]
    print("+", " ".join(cmd), flush=True)
    env = dict(os.environ, DOCPIPE_LOG="info,docpipe=debug")
    t0 = time.time()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    import signal

    def stop(*_):
        # `timeout` signals this process only: take docpipe (and the GPU) down with it.
        proc.kill()
        smi.kill()
        sys.exit(124)

    signal.signal(signal.SIGTERM, stop)
    loaded = None
    for line in proc.stderr:
        sys.stderr.write(line)
        if loaded is None and "generating" in line:
            loaded = time.time()
    rc = proc.wait()
    end = time.time()
    time.sleep(0.3)
    smi.terminate()
    meta = {"rc": rc, "wall_s": end - t0, "load_s": (loaded or end) - t0, "generate_s": end - (loaded or t0),
            "peak_gpu_mib": peak[0], "batch": args.batch,
            "flash_attn": os.environ.get("DOCPIPE_FLASH_ATTN") != "off"}
    Path(args.out + ".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"docpipe {Path(args.out).name}: {json.dumps(meta)}", flush=True)
    if rc != 0:
        sys.exit(rc)


def check(args):
    """Runs the tiny fixture checkpoints' reference requests through `docpipe generate` on the GPU
    and on the CPU, both in f32, and compares the tokens by the rule of the crate's fixture test:
    identical up to the first step where transformers' logit margin is below 0.05 (where the
    summation order may flip the choice), entirely when there is none. (The CPU build is compared
    with transformers by that test; docpipe's prompts follow transformers 4.4x, so some ids differ
    from the 5.x references, which is why the GPU is compared with the CPU here.) Being the first
    CUDA runs, these also JIT-compile candle's kernels for the runs after them."""
    import subprocess

    out, failed = Path(args.out), 0
    out.mkdir(parents=True, exist_ok=True)
    device = os.environ.get("GPU_BENCH_DOCPIPE_DEVICE", "cuda:0")
    for ref in sorted(p.parent for p in (Path(args.fixtures) / "reference").glob("*/requests.jsonl")):
        runs = {}
        for dev in ("cpu", device):
            path = out / f"check_{ref.name}_{dev.replace(':', '')}.jsonl"
            cmd = [args.bin, "generate", "--model", str(Path(args.fixtures) / "models" / ref.name),
                   "--requests", str(ref / "requests.jsonl"), "--out", str(path),
                   "--device", dev, "--dtype", "f32", "--batch-size", "4"]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            runs[dev] = {r["id"]: r["token_ids"] for r in load_requests(path)}
        agree = []
        for want in load_requests(ref / "expected.jsonl"):
            safe = next((i for i, m in enumerate(want["margins"]) if m < 0.05), None)
            cpu, gpu = runs["cpu"][want["id"]], runs[device][want["id"]]
            ok = gpu == cpu if safe is None else gpu[:safe] == cpu[:safe]
            agree.append(ok)
            if not ok:
                print(f"check {ref.name}/{want['id']}: {device} {gpu} vs cpu {cpu} (margin-safe prefix {safe})")
        failed += agree.count(False)
        print(f"check {ref.name}: {agree.count(True)}/{len(agree)} requests give the CPU's tokens", flush=True)
    sys.exit(1 if failed else 0)


def summary(args):
    """FLOPs per request: 2 * params * tokens for every matmul, plus attention 4 * L * t * ctx * d."""
    bench, res = Path(args.bench), Path(args.results)
    params = json.loads((Path(args.model_root) / "params.json").read_text())
    hf = json.loads((res / "transformers.json").read_text()) if (res / "transformers.json").exists() else {}
    crops = {"split": 5, "nosplit": 1}
    out = {"params": params, "transformers": hf, "docpipe": {}}
    for workload in ("docvqa", "ocr"):
        reqs = {r["id"]: r for r in load_requests(bench / f"{workload}.jsonl")}
        for mode in ("split", "nosplit"):
            key = f"{workload}_{mode}"
            lines_path = res / f"docpipe_{key}.jsonl"
            meta_path = res / f"docpipe_{key}.json"
            if not lines_path.exists() or not meta_path.exists():
                continue
            meta = json.loads(meta_path.read_text())
            rows = load_requests(lines_path)
            gen_tokens = sum(len(r["token_ids"]) for r in rows)
            prompt = sum(r["prompt_tokens"] for r in rows)
            pages = len({c["path"] for r in reqs.values() for m in r["messages"] for c in m["content"] if c["type"] == "image"})
            stops = sum(r["finish_reason"] != "length" for r in rows)
            # Valid patches per crop of a page, as counted by transformers' processor.
            patches = hf.get(f"patches_{mode}") or []
            flops = page_flops(params, rows, crops[mode], patches, pages, len(reqs) // pages)
            d = {
                "seconds": meta["generate_s"],
                "wall_s": meta["wall_s"],
                "requests": len(rows),
                "pages": pages,
                "generated_tokens": gen_tokens,
                "prompt_tokens": prompt,
                "stopped_on_eos": stops,
                "peak_gpu_mib": meta.get("peak_gpu_mib"),
                "flops_docpipe": flops["docpipe"],
                "flops_hf": flops["hf"],
            }
            hk = hf.get(key)
            hf_rows = {}
            if (res / f"hf_{key}.jsonl").exists():
                hf_rows = {r["id"]: r["token_ids"] for r in load_requests(res / f"hf_{key}.jsonl")}
            if hf_rows:
                same = sum(hf_rows.get(r["id"]) == r["token_ids"] for r in rows)
                first = sum((hf_rows.get(r["id"]) or [None])[:1] == r["token_ids"][:1] for r in rows)
                d["same_tokens_as_hf"] = f"{same}/{len(rows)} identical, {first}/{len(rows)} same first token"
            out["docpipe"][key] = d
            for who, secs, fl in (("docpipe", d["seconds"], flops["docpipe"]), ("hf", hk and hk["seconds"], flops["hf"])):
                if secs:
                    for peak, label in ((989e12, "spec"), (800e12, "measured")):
                        d[f"{who}_pct_of_bound_{label}"] = 100 * fl / peak / secs
    (res / "summary.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


def page_flops(params, rows, n_crops, patches_per_crop, pages, questions):
    """Total FLOPs of a workload. docpipe encodes each page once per batch (questions of a page share
    it); transformers encodes it once per request. Vision: 2*P_vision*patches + 4*27*patches^2*1152 per
    crop; connector: 2*P_per_patch*(patches+64) + 2*P_per_latent*64 per crop;
    text: 2*(P_layers)*tokens + 2*P_lm_head per generated position (transformers and docpipe only
    project the last position in prefill) + attention 4*32*4096*sum(ctx)."""
    vis_params = params["vision"]
    patches = patches_per_crop
    vision = sum(2 * vis_params * p + 4 * 27 * p * p * 1152 for p in patches)
    connector = sum(
        2 * params["connector_per_patch"] * (p + 64) + 2 * params["connector_per_latent"] * 64 for p in patches
    )
    image = vision + connector
    text = 0
    for r in rows:
        t, g = r["prompt_tokens"], len(r["token_ids"])
        text += 2 * params["text_layers"] * (t + g) + 2 * params["lm_head"] * max(g, 1)
        text += 4 * 32 * 4096 * (t * t / 2 + g * (t + g / 2))
    return {"docpipe": image * pages + text, "hf": image * len(rows) + text}

def flash_check(args):
    """FlashAttention against the per-sequence attention it replaces (DOCPIPE_FLASH_ATTN=off), on the
    real-dimension checkpoint in bf16: the first-step logits of each request, compared relative to
    their scale, and the share of requests whose tokens agree (random weights leave near-ties, so
    some may flip after a few steps). Fails when the logits differ by more than bf16 rounding
    explains (relative 5e-2) or when first tokens disagree for more than a quarter of requests."""
    import subprocess

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Beside the original: image paths are relative to the request file.
    requests = Path(args.requests).with_name("flash_requests.jsonl")
    requests.write_text("".join(Path(args.requests).read_text().splitlines(True)[: args.requests_count]))
    runs = {}
    for mode in ("fused", "off"):
        path = out / f"flash_{mode}"
        cmd = [args.bin, "generate", "--model", args.model, "--requests", str(requests),
               "--out", f"{path}.jsonl", "--logits-out", f"{path}.npy",
               "--device", os.environ.get("GPU_BENCH_DOCPIPE_DEVICE", "cuda:0"), "--dtype", "bf16",
               "--batch-size", str(args.batch)]
        env = dict(os.environ)
        if mode == "off":
            env["DOCPIPE_FLASH_ATTN"] = "off"
        print("+", "DOCPIPE_FLASH_ATTN=off" if mode == "off" else "", " ".join(cmd), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True, env=env)
        runs[mode] = {"wall_s": time.time() - t0, "logits": np.load(f"{path}.npy"),
                      "tokens": [r["token_ids"] for r in load_requests(Path(f"{path}.jsonl"))]}
    fused, off = runs["fused"], runs["off"]
    scale = np.abs(off["logits"]).max(axis=1)
    relative = float((np.abs(fused["logits"] - off["logits"]).max(axis=1) / scale).max())
    first = np.mean(fused["logits"].argmax(axis=1) == off["logits"].argmax(axis=1))
    same = np.mean([a == b for a, b in zip(fused["tokens"], off["tokens"])])
    report = {"requests": len(off["tokens"]), "max_relative_logit_difference": relative,
              "same_first_token": float(first), "same_tokens": float(same),
              "wall_s_fused": fused["wall_s"], "wall_s_off": off["wall_s"]}
    (out / "flash_check.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"flash check: {json.dumps(report)}", flush=True)
    sys.exit(0 if relative < 5e-2 and first >= 0.75 else 1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("bench")
    s.add_argument("model_root")
    t = sub.add_parser("transformers")
    t.add_argument("bench")
    t.add_argument("model_root")
    t.add_argument("out")
    t.add_argument("--batch-docvqa", type=int, default=8)
    t.add_argument("--batch-ocr", type=int, default=4)
    t.add_argument("--time-box", type=float, default=200)
    t.add_argument("--workloads", default="docvqa,ocr", help="request files in BENCH_DIR, without .jsonl")
    d = sub.add_parser("docpipe")
    d.add_argument("bin")
    d.add_argument("model")
    d.add_argument("requests")
    d.add_argument("out", help="prefix: writes OUT.jsonl (docpipe's output) and OUT.json (timings)")
    d.add_argument("--batch", type=int, default=8)
    c = sub.add_parser("check")
    c.add_argument("bin")
    c.add_argument("fixtures")
    c.add_argument("out")
    f = sub.add_parser("flashcheck")
    f.add_argument("bin")
    f.add_argument("model")
    f.add_argument("requests")
    f.add_argument("out")
    f.add_argument("--requests-count", type=int, default=4)
    f.add_argument("--batch", type=int, default=8)
    m = sub.add_parser("summary")
    m.add_argument("bench")
    m.add_argument("model_root")
    m.add_argument("results")
    a = ap.parse_args()
    {"setup": setup, "transformers": transformers_bench, "docpipe": docpipe_bench, "summary": summary,
     "check": check, "flashcheck": flash_check}[a.cmd](a)
