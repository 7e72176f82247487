#!/usr/bin/env python3
"""Write a one-layer container image as a docker-archive tarball (what `docker save` writes and
`ctr images import` reads) from a root filesystem folder, without a registry or a daemon.

The layer is reproducible: entries sorted, owned by root, mtime 0; the folder's modes are kept.
Used by hack/image.sh (the operator and the test workload) and hack/node.sh (the pause image).

Usage: image-archive.py --root DIR --tag NAME:TAG --out FILE [--user U] [--entrypoint JSON]
                        [--cmd JSON] [--expose PORT]... [--label KEY=VALUE]... [--env K=V]...
"""
import argparse
import hashlib
import io
import json
import os
import platform
import sys
import tarfile


def layer_tar(root: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                entries.append(os.path.join(dirpath, name))
        for path in sorted(entries, key=lambda p: os.path.relpath(p, root)):
            info = tar.gettarinfo(path, arcname=os.path.relpath(path, root))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--user", default="")
    p.add_argument("--entrypoint", default="null")
    p.add_argument("--cmd", default="null")
    p.add_argument("--expose", action="append", default=[])
    p.add_argument("--label", action="append", default=[])
    p.add_argument("--env", action="append", default=[])
    args = p.parse_args()
    if not os.path.isdir(args.root):
        print(f"image-archive: --root {args.root} is not a folder", file=sys.stderr)
        return 2

    layer = layer_tar(args.root)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        # This machine's: the image packs binaries built here.
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
        "os": "linux",
        "config": {
            "User": args.user,
            "Env": args.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": json.loads(args.entrypoint),
            "Cmd": json.loads(args.cmd),
            "WorkingDir": "/",
            "ExposedPorts": {f"{port}/tcp": {} for port in args.expose} or None,
            "Labels": dict(label.split("=", 1) for label in args.label) or None,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "hack/image-archive.py", "comment": args.tag}],
    }
    config["config"] = {k: v for k, v in config["config"].items() if v is not None}
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id.split(":", 1)[1] + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [args.tag], "Layers": [layer_name]}]

    with tarfile.open(args.out, mode="w", format=tarfile.PAX_FORMAT) as out:
        for name, data in (
            (layer_name, layer),
            (config_name, config_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            out.addfile(info, io.BytesIO(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
