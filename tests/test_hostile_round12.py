"""The twelfth pass: what the eleventh noticed and left alone, mended."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from helpers import assert_fails

from edgeport.errors import ArtifactError, InvalidOptionError


def test_run_says_when_its_batch_size_does_not_apply(cli, minilm_int8, minilm_onnx):
    """A dynamic INT8 model runs every row alone; ``run --batch-size 8`` said nothing of it
    (``serve`` prints a note)."""
    texts = ("--text", "The quick brown fox.", "--text", "A second, longer sentence about foxes.")
    given = cli("run", minilm_int8.path, *texts, "--batch-size", "8")
    assert given.exit_code == 0, given.output
    assert "note: --batch-size 8 does not apply" in given.output and "runs alone" in given.output
    default = cli("run", minilm_int8.path, *texts)
    assert default.exit_code == 0 and "note:" not in default.output        # only where the user asked
    batched = cli("run", minilm_onnx.path, *texts, "--batch-size", "8")
    assert batched.exit_code == 0 and "note:" not in batched.output        # FP32: the batch size applies


def test_a_bundle_given_where_a_folder_is_taken_is_named_as_one(cli, onnx_artifacts, tmp_path):
    """``bench x.tar.gz`` said "a file, not an artifact folder"; the bundle holds one, as the
    message now says."""
    from edgeport.package.bundle import package_bundle

    bundle = package_bundle(onnx_artifacts["encoder"].path, tmp_path / "enc.tar.gz")
    assert_fails(cli("bench", "run", bundle, "--rounds", "1", "--no-memory", "--json", tmp_path / "r.json"),
                 ArtifactError.exit_code, "is a bundle, and this command takes an artifact folder",
                 "the 'artifact' folder inside what 'tar -xzf' unpacks", absent=tmp_path / "r.json")
    with tarfile.open(bundle) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    (folder,) = (tmp_path / "unpacked").iterdir()
    result = cli("bench", "run", folder / "artifact", "--rounds", "1", "--no-memory", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["results"]


@pytest.mark.parametrize("given", ["0.05", "0.5"])
def test_a_regression_threshold_without_its_percent_sign_below_one_is_refused(cli, given, tmp_path):
    """``--max-regression 0.05`` allowed a 0.05% change: a fraction read as a percentage."""
    from edgeport.bench.compare import parse_percent

    with pytest.raises(InvalidOptionError, match=f"'{given}' has no % sign and would read as {given}%"):
        parse_percent(given)
    assert parse_percent(f"{given}%") == pytest.approx(float(given) / 100)
    assert parse_percent("5") == pytest.approx(0.05) and parse_percent("0") == 0      # unambiguous
    report = tmp_path / "missing.json"
    assert_fails(cli("bench", "compare", report, report, "--max-regression", given), InvalidOptionError.exit_code,
                 f"or '{float(given) * 100:g}%' for a fraction of {given}")


def test_nan_in_an_integer_tensor_is_named():
    """NaN given for an INT64 input was called "fractional"."""
    from edgeport.serve.protocol import ProtocolError, parse_infer

    body = {"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, float("nan")]}]}
    with pytest.raises(ProtocolError, match="input 'input_ids': data holds NaN or infinite values, not INT64"):
        parse_infer(json.dumps(body).encode(), None)
    body["inputs"][0]["data"] = [1, 2.5]
    with pytest.raises(ProtocolError, match="data holds fractional values, not INT64"):
        parse_infer(json.dumps(body).encode(), None)
    body["inputs"][0]["data"] = [1, 2]
    request = parse_infer(json.dumps(body).encode(), None)
    np.testing.assert_array_equal(request.inputs["input_ids"], [[1, 2]])


def test_sigterm_while_serve_starts_exits_0_with_nothing_served(minilm_onnx):
    """systemd and Kubernetes stop a server that is still loading its model with SIGTERM: it
    exited 130 ("interrupted"), a failure to them; once serving, SIGTERM exits 0."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    from serving import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "edgeport.cli", "serve", str(minilm_onnx.path), "--port",
                                str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and process.poll() is None:
            try:                 # the port listens from before the model loads (checksums, session, golden check)
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "stopped by SIGTERM while starting; nothing was served" in err and "error:" not in err, err
    assert "serving '" not in err


def test_an_output_inside_another_artifact_is_refused(cli, onnx_artifacts, tmp_path):
    """``quantize A -o B/sub`` wrote an artifact inside the artifact B, whose every later
    --force was then refused (B held a folder its manifest does not list)."""
    import shutil

    host = tmp_path / "host"
    shutil.copytree(onnx_artifacts["classifier"].path, host)
    assert_fails(cli("quantize", onnx_artifacts["classifier"].path, "-o", host / "sub", "--mode", "fp16"),
                 InvalidOptionError.exit_code, f"lies inside the artifact '{host}'", absent=host / "sub")
    assert_fails(cli("inspect", tmp_path / "missing.tar.gz"), ArtifactError.exit_code,
                 "no bundle at", "the file does not exist")


def test_what_a_killed_process_left_goes_with_the_next_run(onnx_artifacts, minilm_onnx, tmp_path, monkeypatch):
    """kill -9 (or the OOM killer) skips every cleanup: a bundle's partial extraction (tens of MB
    for MiniLM) and a quantize's work folder stayed for good.  A folder is removed when its
    name says this host and its process is gone; never another host's, never a live one's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from edgeport.package.bundle import package_bundle
    from edgeport.runtime.bundle import cache_root, open_bundle
    from edgeport.workdirs import owned_prefix

    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    dead_mark = owned_prefix("").replace(f"{os.getpid()}-", f"{pid_max + 1}-")   # no process has that id
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = cache_root()
    dead = cache / f".extracting.{dead_mark}k1ll3d_x.tmp"
    (dead / "artifact").mkdir(parents=True)
    (dead / "artifact" / "model.onnx").write_bytes(b"partial")
    alive = cache / f".extracting.{dead_mark.replace(str(pid_max + 1), '1')}5t1ll_on.tmp"   # pid 1 runs
    elsewhere = cache / f".extracting.{pid_max + 1}-0ther0st.4n0ther_.tmp"                 # another host's
    alive.mkdir()
    elsewhere.mkdir()
    artifact = open_bundle(package_bundle(onnx_artifacts["encoder"].path, tmp_path / "enc.tar.gz"))
    assert (artifact.path / "model.onnx").is_file()
    assert not dead.exists() and alive.is_dir() and elsewhere.is_dir()

    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    killed = subprocess.Popen([sys.executable, "-m", "edgeport.cli", "quantize", str(minilm_onnx.path),   # ~25 s
                               "-o", str(tmp_path / "q1"), "--mode", "fp16"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(temp.glob("edgeport-quantize-*")) and killed.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    left = list(temp.glob("edgeport-quantize-*"))
    assert left and killed.returncode == -signal.SIGKILL          # killed while it worked: its folder stayed
    again = subprocess.run([sys.executable, "-m", "edgeport.cli", "quantize", str(onnx_artifacts["encoder"].path),
                            "-o", str(tmp_path / "q2"), "--mode", "fp16"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert not any(folder.exists() for folder in left) and not list(temp.glob("edgeport-quantize-*"))
