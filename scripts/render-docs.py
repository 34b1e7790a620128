#!/usr/bin/env python3
"""Fills the output of every `$ palisade ...` line in docs/*.md console blocks
by running it. The docs test (crates/palisade/tests/docs_examples.rs) then
checks the docs still match. Usage: cargo build && python3 scripts/render-docs.py"""
import glob, os, re, subprocess, sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
binary = os.path.join(root, "target", "debug", "palisade")

for path in sorted(glob.glob(os.path.join(root, "docs", "*.md"))):
    lines = open(path).read().split("\n")
    out, in_block, skipping = [], False, False
    for line in lines:
        if not in_block:
            out.append(line)
            in_block = line.strip() == "```console"
            continue
        if line.strip() == "```":
            in_block = False
            out.append(line)
            continue
        if line.startswith("$ "):
            cmd = line[2:]
            run = re.sub(r"(^|\| )palisade", lambda m: m.group(1) + binary, cmd)
            res = subprocess.run(["sh", "-c", run], cwd=root, capture_output=True, text=True)
            out.append(line)
            out.extend(res.stdout.rstrip("\n").split("\n") if res.stdout.strip() else [])
        # other lines inside the block are old output: dropped
    open(path, "w").write("\n".join(out))
    print("rendered", os.path.relpath(path, root))
