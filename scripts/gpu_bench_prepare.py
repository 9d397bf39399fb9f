"""Prepares the inputs of the Idefics2 GPU benchmark (scripts/gpu-bench.sh) into .cache/gpu-bench/.

Runs on the build machine, in the fixtures venv (it imports fixtures/make_fixtures.py for the page
drawing). Needs the one-layer real-dimension checkpoint (`python fixtures/make_fixtures.py --real-dims
.cache/idefics2-real-dims`): its config, tokenizer and processor files become the template of the
full-depth checkpoint, and its tensor names and shapes (read from the safetensors headers, the
weights themselves are not needed) are replicated over all layers on the GPU machine.

Writes: template/ (small files), shapes.json, pages.npz (the page pixels; scripts/gpu_bench.py writes
them as pages/page_NN.png on the GPU machine for docpipe and hands the arrays to transformers, so that
machine needs no image library), docvqa.jsonl, ocr.jsonl, load.jsonl.

    /work/venv-fixtures/bin/python scripts/gpu_bench_prepare.py --pages 16 --ocr-pages 4
"""

import argparse
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))
from make_fixtures import _page  # noqa: E402

QUESTIONS = [
    "What is the total amount on this page?",
    "Which company sent this letter?",
    "What is the date written at the top of the page?",
    "Is there a signature at the bottom of the page?",
]
OCR_PROMPT = "Transcribe all the text on this page."


def safetensors_shapes(path: Path) -> dict:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def request(rid, page, text, max_new_tokens):
    content = [{"type": "image", "path": f"pages/{page}"}, {"type": "text", "text": text}]
    return {"id": rid, "messages": [{"role": "user", "content": content}], "max_new_tokens": max_new_tokens}


def write_jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", type=Path, default=ROOT / ".cache/idefics2-real-dims/model")
    ap.add_argument("--out", type=Path, default=ROOT / ".cache/gpu-bench")
    ap.add_argument("--pages", type=int, default=16)
    ap.add_argument("--ocr-pages", type=int, default=4)
    ap.add_argument("--answer-tokens", type=int, default=16)
    ap.add_argument("--ocr-tokens", type=int, default=512)
    args = ap.parse_args()

    if args.out.exists():
        shutil.rmtree(args.out)
    (args.out / "template").mkdir(parents=True)
    for f in args.source.iterdir():
        if not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy(f, args.out / "template" / f.name)
    shapes = {}
    for f in sorted(args.source.glob("*.safetensors")):
        shapes.update(safetensors_shapes(f))
    (args.out / "shapes.json").write_text(json.dumps(dict(sorted(shapes.items())), indent=1) + "\n")

    # A4 portrait rendered at 980 px on the long edge, like `docpipe render`'s default.
    rng = np.random.default_rng(2026)
    arrays = {}
    for i in range(args.pages):
        accent = tuple(int(c) for c in rng.integers(0, 200, 3))
        img = _page(rng, 693, 980, accent)
        name = f"page_{i:02d}.png"
        arrays[name] = np.asarray(img)
    np.savez_compressed(args.out / "pages.npz", **arrays)

    names = sorted(arrays)
    write_jsonl(
        args.out / "docvqa.jsonl",
        [request(f"{n[:-4]}_q{q}", n, text, args.answer_tokens) for n in names for q, text in enumerate(QUESTIONS)],
    )
    write_jsonl(
        args.out / "ocr.jsonl",
        [request(f"{n[:-4]}_ocr", n, OCR_PROMPT, args.ocr_tokens) for n in names[: args.ocr_pages]],
    )
    load = {"id": "load", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}], "max_new_tokens": 1}
    write_jsonl(args.out / "load.jsonl", [load])
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {args.out} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
