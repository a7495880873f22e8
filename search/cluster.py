"""The Ray cluster a sweep runs on: refuse an address nobody answers at, fit the studies' requests to a local
instance."""
from __future__ import annotations

import socket
import sys

from search.spec import Spec
from trainables.errors import SpecError


def check_address(address: str | None) -> None:
    """Fail fast on a --address nobody answers at: ray.init would retry for minutes, then raise a traceback."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise SpecError(f"--address {address!r}: expected auto or HOST:PORT of a Ray cluster's head")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise SpecError(f"--address {address}: no Ray cluster answers there ({e.strerror or e})") from None


def adapt_resources(spec: Spec, local: bool, quiet: bool) -> Spec:
    """Fit the studies' requests to a local Ray instance; on a cluster, keep them (nodes may join later).

    A local instance without a GPU runs GPU-asking studies on the CPU and says so in one line: Tune
    would otherwise leave every trial PENDING forever without a word (the shipped specs ask for
    fractional GPUs). A CPU request above the machine's CPUs is lowered to all of them, likewise.
    """
    import dataclasses

    import ray

    if not local:
        return spec
    have = ray.cluster_resources()
    gpus, cpus = float(have.get("GPU", 0)), float(have.get("CPU", 1))
    studies = []
    for st in spec.studies:
        new = st
        if st.gpu > 0 and gpus == 0:
            print(f"gentune sweep: study {st.name} asks gpu {st.gpu:g} per trial but this machine has no GPU; "
                  "running its trials on the CPU (--set resources.gpu=0 says so in the spec)", file=sys.stderr)
            new = dataclasses.replace(new, gpu=0.0)
        elif st.gpu > gpus:
            raise SpecError(f"study {st.name}: resources.gpu {st.gpu:g} per trial, but this machine has {gpus:g} GPU(s)")
        if st.cpu > cpus:
            if not quiet:
                print(f"gentune sweep: study {st.name} asks cpu {st.cpu:g} per trial; this machine has {cpus:g}: "
                      f"using {cpus:g}", file=sys.stderr)
            new = dataclasses.replace(new, cpu=cpus)
        studies.append(new)
    return dataclasses.replace(spec, studies=tuple(studies))
