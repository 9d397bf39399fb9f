"""A manual-like PDF for render benchmarks (docs/benchmarks.md): N pages, each 55 lines of
Helvetica/Courier text, a header rule and a few filled squares, so that a page costs pdfium
about what a page of a real manual does. Standard library only; generate into /tmp, never
commit the output. Usage: python3 scripts/make-manual-pdf.py OUT.pdf N"""
import sys, random
out, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
words = ("function argument return value buffer context digest cipher block key nonce "
         "the of and to in is that for with as on by this be are an or it").split()
objs = ["<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Count %d /Kids [%s] >>" % (n, " ".join("%d 0 R" % (5 + 2*i) for i in range(n))),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Courier >>"]
for i in range(n):
    lines = ["BT /F1 14 Tf 72 740 Td (Chapter %d, page %d) Tj ET" % (i // 10 + 1, i + 1),
             "0.5 w 72 730 m 540 730 l S"]
    y = 710
    for l in range(55):
        font = "/F2 9" if l % 11 == 5 else "/F1 10"
        text = " ".join(rnd.choice(words) for _ in range(14))
        lines.append("BT %s Tf 72 %d Td (%s) Tj ET" % (font, y, text))
        y -= 11.5
    for k in range(12):
        x, yy = 380 + rnd.random()*120, 80 + rnd.random()*60
        lines.append("%.2f %.2f %.2f rg %.1f %.1f %.1f %.1f re f" % (rnd.random(), rnd.random(), rnd.random(), x, yy, 20, 20))
    content = "\n".join(lines)
    objs.append("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
                "/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> >>" % (6 + 2*i))
    objs.append("<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
pdf = bytearray(b"%PDF-1.4\n"); offs = []
for i, o in enumerate(objs):
    offs.append(len(pdf)); pdf += b"%d 0 obj\n%s\nendobj\n" % (i + 1, o.encode())
x = len(pdf)
pdf += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
for o in offs: pdf += b"%010d 00000 n \n" % o
pdf += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, x)
open(out, "wb").write(pdf)
