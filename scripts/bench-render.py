"""Render throughput: `docpipe render` with 1 and 2 workers against one pypdfium2 process that
renders the same pages at the same size and saves them as PNG (Pillow defaults).

    python scripts/bench-render.py [--docs 16] [--bin target/debug/docpipe]

Run it with a Python that has pypdfium2 (5.15.2, the pdfium build the project uses) and Pillow,
e.g. a venv outside the repo. The corpus is the fixture PDFs, combined into --docs documents of
8 pages each, written to a temporary folder; each measurement is the best of --repeat runs.
"""

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pypdfium2 as pdfium

ROOT = Path(__file__).resolve().parent.parent
LONGEST_EDGE = 980


def make_corpus(folder, docs):
    sources = [pdfium.PdfDocument(str(p)) for p in sorted((ROOT / "fixtures/pdfs").glob("*.pdf"))]
    pages = [(s, i) for s in sources for i in range(len(s))]
    for d in range(docs):
        out = pdfium.PdfDocument.new()
        for k in range(8):
            source, index = pages[(d * 8 + k) % len(pages)]
            out.import_pages(source, [index])
        out.save(str(folder / f"doc-{d:03d}.pdf"))
    return docs * 8


def docpipe(binary, corpus, out, workers):
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([binary, "render", str(corpus), "--out", str(out), "--workers", str(workers)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def pypdfium2_baseline(corpus, out):
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    for path in sorted(corpus.glob("*.pdf")):
        pdf = pdfium.PdfDocument(str(path))
        pdf.init_forms()
        folder = out / path.stem
        folder.mkdir(parents=True)
        for index in range(len(pdf)):
            page = pdf[index]
            scale = LONGEST_EDGE / max(page.get_size())
            page.render(scale=scale, may_draw_forms=True).to_pil().save(folder / f"page-{index + 1:04d}.png")
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bin", default=str(ROOT / "target/debug/docpipe"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus"
        corpus.mkdir()
        pages = make_corpus(corpus, args.docs)
        best = lambda f: min(f() for _ in range(args.repeat))
        one = best(lambda: docpipe(args.bin, corpus, tmp / "out1", 1))
        two = best(lambda: docpipe(args.bin, corpus, tmp / "out2", 2))
        base = best(lambda: pypdfium2_baseline(corpus, tmp / "outpy"))
    print(f"{pages} pages in {args.docs} documents, {os.cpu_count()} CPUs, best of {args.repeat}")
    print("| run | seconds | pages/s | speed-up |")
    print("|---|---|---|---|")
    for name, seconds in [("pypdfium2, 1 process, PIL PNG", base), ("docpipe --workers 1", one),
                          ("docpipe --workers 2", two)]:
        print(f"| {name} | {seconds:.2f} | {pages / seconds:.1f} | {base / seconds:.2f}x vs pypdfium2 |")
    print(f"\n--workers 2 vs --workers 1: {one / two:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
