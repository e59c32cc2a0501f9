"""Peak memory and cold start of one variant, measured in a fresh process of its own.

On Linux ``ru_maxrss`` survives fork and exec: a probe started by a large bench process
reports the bench's own high-water mark (measured: 208 MB for both a 92 MB FP32 model and
its 25 MB INT8 twin).  ``VmHWM`` in /proc/self/status belongs to the process's address
space, which exec replaces, so the probe reads that.  The probe prepares its inputs before
it loads the model and reports the resident memory just before the load, so the model's
own share can be told apart from Python's.
"""

from __future__ import annotations

import json
import subprocess

from ..processes import python_code

PROBE = r"""
import json, sys, time
from edgeport.artifact import Artifact
from edgeport.data import examples_for

def status(key):
    try:
        with open('/proc/self/status') as handle:
            for line in handle:
                if line.startswith(key + ':'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

artifact = Artifact.load(sys.argv[1], check_files=False)
if artifact.task == 'text-generation':
    from edgeport.data import generation_prompts
    work = [[p] for p in generation_prompts(4)]
    call = lambda model, prompts: model.generate(prompts, max_new_tokens=16)
else:
    examples = examples_for(artifact, None if sys.argv[2] == '-' else sys.argv[2], limit=8, batch_size=1)
    work = list(examples.batches)
    call = lambda model, feeds: model.run(feeds)
from edgeport.runtime import load
before = status('VmRSS')
start = time.perf_counter()
model = load(sys.argv[1], device='cpu', check_files=False)
created = time.perf_counter() - start
first = time.perf_counter()
call(model, work[0])
cold = created + time.perf_counter() - first
for item in work[1:]:
    call(model, item)
print(json.dumps({'peak_rss_mb': status('VmHWM'), 'rss_before_load_mb': before, 'cold_start_ms': cold * 1000}))
"""


def measure_memory(artifact_path: str, data: str | None, timeout: float = 300) -> dict:
    """``peak_rss_mb``, ``rss_before_load_mb`` and ``cold_start_ms`` of the artifact, or
    None figures with the reason when the probe fails."""
    try:
        proc = subprocess.run(python_code(PROBE, artifact_path, data or "-"),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"peak_rss_mb": None, "rss_before_load_mb": None, "cold_start_ms": None,
                "memory_probe_error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["exit code %d" % proc.returncode])[-1]
        return {"peak_rss_mb": None, "rss_before_load_mb": None, "cold_start_ms": None,
                "memory_probe_error": reason[:300]}
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: round(v, 1) for k, v in figures.items()}
