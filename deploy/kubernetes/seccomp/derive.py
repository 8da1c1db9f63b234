#!/usr/bin/env python3
"""Writes portcullis.json: the container runtimes' default seccomp profile, resolved for
the agent's capabilities and architecture, plus the two system calls the agent needs.

The default profile (containers-common's seccomp.json, the same list as Docker's and
containerd's) allows bpf() and perf_event_open() only to containers with CAP_SYS_ADMIN.
The agent has CAP_BPF and CAP_PERFMON instead, which the kernel checks for those calls, so
the profile allows the two calls and leaves every other decision as the default made it.
The output is the OCI runtime-spec form (no conditional entries) that containerd, CRI-O
and podman all read as a Localhost profile.

    python3 derive.py /usr/share/containers/seccomp.json > portcullis.json
"""
import json
import sys

# What the DaemonSet grants (deploy/kubernetes/base/daemonset.yaml).
CAPABILITIES = {"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"}
ARCH = "amd64"  # the image is built for x86_64
ADDED = ["bpf", "perf_event_open"]


def applies(entry):
    includes, excludes = entry.get("includes") or {}, entry.get("excludes") or {}
    if "arches" in includes and ARCH not in includes["arches"]:
        return False
    if "caps" in includes and not CAPABILITIES.issuperset(includes["caps"]):
        return False
    if "arches" in excludes and ARCH in excludes["arches"]:
        return False
    if "caps" in excludes and CAPABILITIES.intersection(excludes["caps"]):
        return False
    return True


def main(path):
    default = json.load(open(path))
    arch = next(a for a in default["archMap"] if a["architecture"] == "SCMP_ARCH_X86_64")
    syscalls = []
    for entry in filter(applies, default["syscalls"]):
        names = [n for n in entry["names"] if n not in ADDED]
        if not names:
            continue
        out = {"names": names, "action": entry["action"]}
        for key in ("errnoRet", "args"):
            if entry.get(key):
                out[key] = entry[key]
        syscalls.append(out)
    syscalls.append({"names": ADDED, "action": "SCMP_ACT_ALLOW"})
    profile = {
        "defaultAction": default["defaultAction"],
        "defaultErrnoRet": default["defaultErrnoRet"],
        "architectures": [arch["architecture"]] + arch["subArchitectures"],
        "syscalls": syscalls,
    }
    json.dump(profile, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
