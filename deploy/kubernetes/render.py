#!/usr/bin/env python3
"""Render a kustomization to one YAML stream, offline, for CI (kustomize itself is not in a registry CI
reaches). Only the subset these manifests use: `resources` (files, or folders with a kustomization),
`namespace`, `images` (newName/newTag) and `patches: [{path}]` merged strategically (maps deep-merged, lists
of maps merged by `name`, other lists replaced). `kubectl kustomize` renders the same folders in full.

Usage: render.py DIR > out.yaml. Exits 1 on anything it does not understand, or a patch with no target.
"""
import os
import sys

import yaml

KNOWN = {"resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace"}


def fail(msg):
    sys.exit(f"render.py: {msg}")


def load_docs(path):
    try:
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        fail(f"{path}: {e}")


def merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list):
        if all(isinstance(x, dict) and "name" in x for x in base + patch):
            out = list(base)
            for p in patch:
                i = next((i for i, b in enumerate(out) if b["name"] == p["name"]), None)
                if i is None:
                    out.append(p)
                else:
                    out[i] = merge(out[i], p)
            return out
    return patch


def render(folder):
    kpath = os.path.join(folder, "kustomization.yaml")
    if not os.path.isfile(kpath):
        fail(f"{folder}: no kustomization.yaml")
    k = load_docs(kpath)[0]
    unknown = set(k) - KNOWN
    if unknown:
        fail(f"{kpath}: unsupported fields {sorted(unknown)}")
    docs = []
    for r in k.get("resources", []):
        p = os.path.join(folder, r)
        docs += render(p) if os.path.isdir(p) else load_docs(p)
    for entry in k.get("patches", []):
        for patch in load_docs(os.path.join(folder, entry["path"])):
            key = (patch["kind"], patch["metadata"]["name"])
            hits = [i for i, d in enumerate(docs) if (d["kind"], d["metadata"]["name"]) == key]
            if not hits:
                fail(f"{entry['path']}: patch target {key} not found")
            for i in hits:
                docs[i] = merge(docs[i], patch)
    for img in k.get("images", []):
        for d in docs:
            spec = d.get("spec", {}).get("template", {}).get("spec", {})
            for c in spec.get("containers", []):
                name, _, tag = c["image"].partition(":")
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag or 'latest')}"
    if "namespace" in k:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
    return docs


if __name__ == "__main__":
    if len(sys.argv) != 2:
        fail("usage: render.py DIR")
    yaml.safe_dump_all(render(sys.argv[1]), sys.stdout, sort_keys=False)
