"""The words edgeport's commands, options and manifests share, and their defaults, defined
once.  The CLI's choices, the library's checks and the manifest's schema all import them
from here; nothing in this module imports anything heavy, so ``edgeport --help`` stays
instant.
"""

from __future__ import annotations

# ------------------------------------------------------------------ tasks

ENCODER_TEXT_TASKS = ("feature-extraction", "text-classification", "token-classification")
CLASSIFICATION_TASKS = ("text-classification", "token-classification", "image-classification")
TASKS = ENCODER_TEXT_TASKS + ("image-classification", "text-generation", "custom")
# What ``export onnx --task`` accepts (custom is what a module:callable source becomes).
EXPORT_TASKS = ENCODER_TEXT_TASKS + ("image-classification", "text-generation")

# Symbolic dimension names written into every graph and manifest.
BATCH, SEQUENCE, HEIGHT, WIDTH = "batch", "sequence", "height", "width"

# ------------------------------------------------------------------ graphs and precision

# Every graph format edgeport runs; each has one module in edgeport/runtime/formats/.
GRAPH_FORMATS = ("onnx", "tensorrt", "genai", "onnx-decoder", "executorch")
EXPORTERS = ("auto", "torchscript", "dynamo", "static")
INT8_MODES = ("int8-dynamic", "int8-static")
WEIGHT_ONLY_MODES = ("int4", "int8-weight-only")          # causal LMs (MatMulNBits)
QUANTIZE_MODES = INT8_MODES + ("fp16",) + WEIGHT_ONLY_MODES
PRECISIONS = ("fp32",) + QUANTIZE_MODES
TARGETS = ("x86-avx2", "x86-avx512-vnni", "x86-amx", "arm64", "gpu")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# int8-dynamic: the graph it quantizes (auto: plain or fused attention, the faster on this host).
ATTENTION_GRAPHS = ("auto", "fused", "plain")

# ------------------------------------------------------------------ merge

COMBINATIONS = ("cat", "linear", "svd")       # cat is exact: the weighted sum of every update
WEIGHT_DTYPES = ("fp32", "fp16", "bf16")

# ------------------------------------------------------------------ running, benchmarking, packaging

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
SCENARIOS = ("single-stream", "offline", "server", "sweep", "generation")   # generation: causal LMs
PACKAGE_FORMATS = ("bundle", "triton", "kserve")
PLATFORMS = ("linux/arm64",)

# ------------------------------------------------------------------ defaults (the library resolves them; the CLI passes None)

DEFAULT_OPSET = 17
MAX_IMAGE_CHANNELS = 1024                # spectral stacks; wider 4-D inputs are tensors, not images
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
DEFAULT_SEQUENCE_LENGTH = 128            # for --static-shapes
DEFAULT_SMOOTH_ALPHA = {"int8-dynamic": 0.7, "int8-static": 0.25}
DEFAULT_MAX_NEW_TOKENS = 32              # causal LMs: run --prompt, generate(), the generation bench

# bench: interleaved rounds, each variant's block at least this long and this many calls
DEFAULT_ROUNDS = 5
DEFAULT_MIN_DURATION_S = 0.5
DEFAULT_MIN_COUNT = 10
DEFAULT_BATCH_SIZES = (1, 8, 32)
DEFAULT_SEQUENCE_LENGTHS = (16, 64, 128, 256)
DEFAULT_SERVER_QUERIES = 200
DEFAULT_MAX_REGRESSION = "5%"            # bench compare / ship gates
DEFAULT_MAX_PARITY_DROP = 0.001

# serve
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH = 32                   # rows per dynamic batch (serve) and Triton's max_batch_size
DEFAULT_MAX_DELAY_MS = 2.0
DEFAULT_MAX_QUEUE = 256
DEFAULT_MAX_BODY_BYTES = 16 << 20
DEFAULT_MAX_REQUEST_ROWS = 256          # rows (texts) in one request: more is 413

# package --format triton, export tensorrt
DEFAULT_TRITON_DELAY_US = 2000
DEFAULT_WORKSPACE_MB = 4096

# Bundles: the format name their bundle.json carries (outputs.py recognises an earlier bundle by it)
BUNDLE_FORMAT = "edgeport-bundle"
BUNDLE_SUFFIXES = (".tar.gz", ".tgz")       # what a bundle file's name ends with
