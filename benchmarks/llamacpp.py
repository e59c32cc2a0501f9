"""llama.cpp (through llama-cpp-python) as a side-by-side baseline for the causal-LM
generation benchmark, on the same weights as a Hugging Face Llama folder.

Benchmark-only helper: neither the edgeport package nor CI imports it, and llama-cpp-python
is not a dependency of the project (``pip install llama-cpp-python`` builds llama.cpp from
source: 0.3.36 took 11 minutes on 2 busy cores).

The HF -> GGUF converter (``convert_hf_to_gguf.py`` and its ``conversion/`` and ``gguf-py/``
folders) is not in the llama-cpp-python wheel, only in its sdist, under vendor/llama.cpp.
The converter of the *same* version as the installed runtime is used, so the GGUF it writes
is one that runtime reads. ``fetch_converter()`` downloads that sdist once (a registry call)
and keeps those files in a cache; ``to_gguf`` itself runs offline.

    python benchmarks/llamacpp.py HF_FOLDER [--threads 2] [--rounds 3] [--new-tokens 128]

converts the folder to every tier, prints the greedy token agreement of each GGUF with
transformers, then the decode speed of the tiers in interleaved rounds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

CONVERTER_ENV = "LLAMA_CPP_CONVERTER"   # a llama.cpp checkout (or vendor/llama.cpp of the sdist)
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeport-bench"

LLAMA_CPP_TIERS = {
    "f16": "convert_hf_to_gguf.py --outtype f16 (2-D weights in f16, norms kept in f32)",
    "q8_0": "convert_hf_to_gguf.py --outtype q8_0 (the converter's own Q8_0, blocks of 32, norms in f32)",
    "q4_0": "convert_hf_to_gguf.py --outtype f32, then llama_cpp.llama_model_quantize with "
            "ftype LLAMA_FTYPE_MOSTLY_Q4_0 and llama.cpp's default recipe (llama-quantize Q4_0)",
}
FILE_TYPES = {0: "f32", 1: "f16", 7: "q8_0", 2: "q4_0"}      # GGUF general.file_type -> tier

# Run in a child process: the converter is a script that imports torch, configures logging
# and calls sys.exit. Two patches, both only for tokenizers the converter does not know:
#  * a byte-level BPE trained locally has a pre-tokenizer hash that is in no table, so
#    get_vocab_base_pre raises "BPE pre-tokenizer was not recognized". tokenizers'
#    ByteLevel(use_regex=True) splits text with the GPT-2 regex, which is llama.cpp's "gpt-2"
#    pre-tokenizer. It only matters when llama.cpp turns text into ids; the benchmark feeds ids.
#  * LlamaModel.set_vocab tries SentencePiece first and imports sentencepiece before looking
#    for tokenizer.model; without that package (not needed for BPE) it must fail as "no file".
_CONVERT = r"""
import runpy, sys
from pathlib import Path
src = Path(sys.argv.pop(1))
sys.path[:0] = [str(src), str(src / "gguf-py")]
import conversion.base as base
known_pre = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return known_pre(self, tokenizer)
    except NotImplementedError:
        base.logger.warning("unknown BPE pre-tokenizer hash: writing 'gpt-2' (byte-level GPT-2 regex)")
        return "gpt-2"
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sentencepiece_vocab = base.TextModel._set_vocab_sentencepiece
def set_vocab_sentencepiece(self, *args, **kwargs):
    if not (self.dir_model / "tokenizer.model").is_file():
        raise FileNotFoundError("no tokenizer.model")
    return sentencepiece_vocab(self, *args, **kwargs)
base.TextModel._set_vocab_sentencepiece = set_vocab_sentencepiece
sys.argv[0] = str(src / "convert_hf_to_gguf.py")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _version() -> str:
    import llama_cpp

    return llama_cpp.__version__


def converter_dir() -> Path:
    """The folder holding convert_hf_to_gguf.py: $LLAMA_CPP_CONVERTER, else the cached copy
    for the installed llama-cpp-python version."""
    folder = Path(os.environ.get(CONVERTER_ENV) or CACHE / f"llama.cpp-{_version()}")
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise RuntimeError(f"no llama.cpp converter in {folder}: run fetch_converter() (python {__file__} "
                           f"--fetch-converter), or point ${CONVERTER_ENV} at a llama.cpp checkout of the "
                           f"same version as llama-cpp-python {_version()}")
    return folder


def fetch_converter() -> Path:
    """Download the llama-cpp-python sdist of the installed version (pip, from the package
    registry) and keep its vendor/llama.cpp converter files in the cache."""
    dest = CACHE / f"llama.cpp-{_version()}"
    if (dest / "convert_hf_to_gguf.py").is_file():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                        f"llama-cpp-python=={_version()}", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("*.tar.gz"))
        with tarfile.open(sdist) as archive:
            root = archive.getnames()[0].split("/")[0] + "/vendor/llama.cpp/"
            keep = (root + "convert_hf_to_gguf.py", root + "conversion/", root + "gguf-py/")
            wanted = [m for m in archive.getmembers() if m.isfile() and m.name.startswith(keep)]
            for member in wanted:
                member.name = member.name[len(root):]
            archive.extractall(dest, members=wanted, filter="data")
    return dest


def _convert(hf_folder: Path, out: Path, outtype: str) -> None:
    run = subprocess.run([sys.executable, "-c", _CONVERT, str(converter_dir()), str(hf_folder),
                          "--outtype", outtype, "--outfile", str(out)], check=False, capture_output=True, text=True)
    if run.returncode != 0 or not out.is_file():
        tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-12:])
        raise RuntimeError(f"convert_hf_to_gguf.py --outtype {outtype} failed on {hf_folder} "
                           f"(exit {run.returncode}):\n{tail}")


def _quantize(source: Path, out: Path, ftype: int) -> None:
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr  # the loader logs every tensor to stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    with suppress_stdout_stderr(disable=False):
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if status != 0 or not out.is_file():
        raise RuntimeError(f"llama_model_quantize({source.name} -> ftype {ftype}) failed with status {status}")


def to_gguf(hf_folder: Path, dest: Path, tier: str) -> Path:
    """The GGUF of ``hf_folder`` for ``tier`` (f16, q8_0, q4_0; f32 too, as the exact
    reference), written as ``dest/<tier>.gguf``. Offline once the converter is cached.
    Q4_0 is quantized from an f32 GGUF, not from f16, so the weights are rounded once."""
    hf_folder, dest = Path(hf_folder), Path(dest)
    if tier not in (*LLAMA_CPP_TIERS, "f32"):
        raise ValueError(f"tier must be one of f32, {', '.join(LLAMA_CPP_TIERS)}; not {tier!r}")
    if not (hf_folder / "config.json").is_file():
        raise RuntimeError(f"{hf_folder} is not a Hugging Face model folder (no config.json)")
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{tier}.gguf"
    if tier == "q4_0":
        import llama_cpp

        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            source = Path(tmp) / "f32.gguf"
            _convert(hf_folder, source, "f32")
            _quantize(source, out, llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0)
    else:
        _convert(hf_folder, out, tier)
    return out


def amx_compiled() -> bool:
    """Whether this llama.cpp build has the AMX backend (a native build on a CPU with AMX)."""
    import llama_cpp

    return "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode()


@contextmanager
def _model_params(**fields):
    """llama_cpp.Llama exposes no use_extra_bufts; it takes llama_model_default_params() as
    the base of its model parameters, so that function is wrapped while a model loads."""
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params():
        value = default()
        for name, setting in fields.items():
            setattr(value, name, setting)
        return value

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = default


class LlamaCppStreamer:
    """A GGUF in llama.cpp, as a streamer of the generation bench: greedy, one token id at a
    time, EOS ignored (exactly ``max_new_tokens`` come out), each request from an empty KV
    cache so no request profits from the previous one's prefix.

    ``kv_cache``: llama.cpp keeps K and V in f16 by default, also for an f32 GGUF; that is what
    its users run, so the bench keeps it. It is the one reason an f32 GGUF drifts from
    transformers FP32 (logits off by ~0.15 at 19 after 150 tokens, so near-ties flip);
    ``kv_cache="f32"`` removes it (logits within 6e-4, greedy identical).

    ``extra_buffers``: llama.cpp's extra weight buffer types, the AMX backend and the
    CPU_REPACK weight repacking (llama-cli --repack / --no-repack). A native build on a CPU
    with AMX (Sapphire Rapids and later) puts Q8_0/Q4_0 weights in the AMX buffer, whose
    matmul segfaults in llama.cpp of llama-cpp-python 0.3.36 (ggml-org/llama.cpp#20824,
    ggml_backend_amx_mul_mat; #16315: AMX Q4_0 also gave wrong results). The default (None)
    turns them off on such builds only; that also drops CPU_REPACK, so quantized tiers run
    the plain (still SIMD) dot-product kernels there."""

    def __init__(self, gguf: Path, threads: int, context: int = 512, kv_cache: str = "f16",
                 extra_buffers: bool | None = None):
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.context = context
        if extra_buffers is None:
            extra_buffers = not amx_compiled()
        kv_type = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}[kv_cache]
        with _model_params(use_extra_bufts=extra_buffers):
            self._llm = llama_cpp.Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads,
                                        n_ctx=context, verbose=False, logits_all=False,
                                        type_k=kv_type, type_v=kv_type)
        file_type = int(self._llm.metadata.get("general.file_type", -1))
        tier = FILE_TYPES.get(file_type, Path(gguf).stem)
        self.info = {"name": f"llama.cpp {tier}", "kind": "llama.cpp", "version": llama_cpp.__version__,
                     "size_bytes": Path(gguf).stat().st_size}
        self.extra_buffers = extra_buffers

    def _empty_cache(self) -> None:
        # Llama.generate(reset=True) would keep the KV entries of a common prefix with the
        # previous request; forgetting the tokens and clearing the memory prevents that.
        self._llm.reset()
        memory = self._llama_cpp.llama_get_memory(self._llm.ctx)
        if memory is not None:
            self._llama_cpp.llama_memory_clear(memory, True)

    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int):
        """Greedy continuation of ``prompt_ids`` (ids, no BOS added), one id at a time."""
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids:
            raise ValueError("llama.cpp needs at least one prompt token")
        if len(prompt_ids) + max_new_tokens > self.context:
            raise ValueError(f"{len(prompt_ids)} prompt + {max_new_tokens} new tokens exceed the context "
                             f"of {self.context}")
        self._empty_cache()
        if max_new_tokens <= 0:
            return
        # temp 0 -> llama.cpp's greedy sampler (argmax); no penalties. generate() never stops
        # on EOS by itself (only create_completion does), so the count alone ends the request;
        # the last token yielded is not evaluated, as in the other streamers.
        tokens = self._llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, typical_p=1.0, temp=0.0,
                                    repeat_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0, reset=True)
        try:
            for count, token in enumerate(tokens, 1):
                yield int(token)
                if count == max_new_tokens:
                    break
        finally:
            tokens.close()

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None


def greedy_tokens(gguf: Path, prompt_ids: list[int], n: int, threads: int = 2,
                  kv_cache: str = "f16") -> list[int]:
    """``n`` greedy new token ids of a GGUF, to compare with transformers (hf_greedy_tokens);
    kv_cache="f32" for the exactness check of an f32 GGUF, "f16" for what the bench runs."""
    streamer = LlamaCppStreamer(gguf, threads, kv_cache=kv_cache)
    try:
        return list(streamer.stream_ids(prompt_ids, n))
    finally:
        streamer.close()


def hf_greedy_tokens(hf_folder: Path, prompt_ids: list[int], n: int) -> list[int]:
    """The transformers reference, FP32 eager: argmax with the KV cache, EOS not stopping it
    (generate(min_new_tokens=...) would instead forbid EOS and change the argmax)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32).eval()
    out, ids, past = [], torch.tensor([list(prompt_ids)]), None
    with torch.no_grad():
        for _ in range(n):
            result = model(ids, past_key_values=past, use_cache=True)
            past, token = result.past_key_values, int(result.logits[0, -1].argmax())
            out.append(token)
            ids = torch.tensor([[token]])
    return out


def agreement(a: list[int], b: list[int]) -> int:
    """Leading tokens in common: after the first difference greedy continuations diverge."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def bench_prompts(hf_folder: Path, count: int = 4, tokens: int = 20) -> list[list[int]]:
    """``count`` prompts of ``tokens`` ids: docstring sentences (the bench's own text source,
    eval split) through the folder's tokenizer, longest first, cut to length."""
    import transformers

    from edgeport.data import stdlib_sentences

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_folder)
    encoded = sorted((tokenizer(s)["input_ids"] for s in stdlib_sentences(64)), key=len, reverse=True)
    return [ids[:tokens] for ids in encoded[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hf_folder", type=Path, nargs="?")
    parser.add_argument("--work", type=Path, help="where the GGUF files go (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--fetch-converter", action="store_true", help="download the converter and exit")
    args = parser.parse_args()
    if args.fetch_converter:
        print(fetch_converter())
        return
    if args.hf_folder is None:
        parser.error("HF_FOLDER is required")
    from edgeport.bench.generation import interleaved_generation, summarize

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        files = {tier: to_gguf(args.hf_folder, work, tier) for tier in ("f32", *LLAMA_CPP_TIERS)}
        prompts = bench_prompts(args.hf_folder)
        reference = [hf_greedy_tokens(args.hf_folder, p, args.new_tokens) for p in prompts]
        print(f"leading greedy tokens equal to transformers FP32, per prompt, of {args.new_tokens}:")
        for tier, path in files.items():
            for kv_cache in ("f32", "f16"):
                agree = [agreement(greedy_tokens(path, p, args.new_tokens, args.threads, kv_cache), r)
                         for p, r in zip(prompts, reference)]
                print(f"  {tier} GGUF, {kv_cache} KV cache: {agree}")
        streamers = {f"llama.cpp {tier}": LlamaCppStreamer(files[tier], args.threads) for tier in LLAMA_CPP_TIERS}
        try:
            timings = interleaved_generation(streamers, prompts, args.new_tokens, args.rounds)
        finally:
            for streamer in streamers.values():
                streamer.close()
        for name, values in timings.items():
            row = summarize(name, values, args.new_tokens, len(prompts))
            size = streamers[name].info["size_bytes"]
            print(f"{name}: decode {row['decode_tokens_per_s']:.1f} tokens/s, "
                  f"TTFT p50 {row['ttft_ms']['p50_ms']:.2f} ms, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
