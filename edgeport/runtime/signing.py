"""Bundles that prove who made them: OpenSSF model-signing (key-based, offline), over every
file of the extracted bundle but the signature itself.

Checksums (SHA256SUMS, the manifest's digest in bundle.json) catch damage, not tampering:
someone who edits a file can re-sum all three.  A signature cannot be redone without the
private key.  ``package --sign KEY`` signs the bundle's content and carries the signature as
its last member, ``<name>/signature.sig`` (everything before it stays the bytes the
reproducible writer made); ``open_bundle(..., trusted_key=PUB)`` (``--trusted-key`` of
``run``, ``serve``, ``verify``, ``inspect``) refuses an unsigned bundle, one signed by another
key, and one whose files changed after signing, on every open, so edits to the cache are
caught too.

model-signing is imported only here, only when a key is given (the ``signing`` extra):
it costs about 0.3 s to import, which the light runtime does not pay otherwise.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

from ..errors import ArtifactError, InvalidOptionError, require

SIGNATURE = "signature.sig"
PASSWORD_VARIABLE = "EDGEPORT_SIGNING_KEY_PASSWORD"


def hashing_config():
    """What is signed: every file, the signature excepted.  model-signing skips .git, .github,
    .gitignore and .gitattributes unless told not to; a bundle has none, so an added one
    must count as a change.  Signer and verifier must use the same configuration."""
    hashing = require("model_signing", "signing").hashing
    return hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)


def sign_folder(folder: Path, private_key: Path, signature: Path) -> None:
    """Sign ``folder`` with the PEM elliptic-curve key ``private_key`` (P-256, P-384 or P-521;
    an encrypted key takes its password from $EDGEPORT_SIGNING_KEY_PASSWORD)."""
    model_signing = require("model_signing", "signing")
    password = os.environ.get(PASSWORD_VARIABLE)
    if not Path(private_key).is_file():
        raise InvalidOptionError(f"--sign: no private key at '{private_key}'")
    try:
        config = model_signing.signing.Config().use_elliptic_key_signer(
            private_key=Path(private_key), password=password.encode() if password is not None else None)
    except TypeError:           # cryptography's answer to a password missing, or given to a key without one
        if password is not None:
            raise InvalidOptionError(f"--sign: '{private_key}' is not encrypted, but ${PASSWORD_VARIABLE} is set; "
                                     "unset it to sign with this key") from None
        raise InvalidOptionError(f"--sign: '{private_key}' is encrypted; give its password in "
                                 f"${PASSWORD_VARIABLE}") from None
    except (ValueError, AttributeError) as exc:
        if password is not None and "password" in str(exc).lower():
            raise InvalidOptionError(f"--sign: the password in ${PASSWORD_VARIABLE} does not open '{private_key}'"
                                     ) from None
        if isinstance(exc, AttributeError):     # model_signing asking a key of another kind for its curve
            detail = ("it holds another kind of key (RSA or Ed25519?); make one with `openssl ecparam -name "
                      "prime256v1 -genkey -noout -out key.pem`")
        else:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidOptionError(f"--sign: '{private_key}' is not a PEM elliptic-curve private key (P-256, P-384 or "
                                 f"P-521) it can use: {detail}") from None
    config.set_hashing_config(hashing_config()).sign(folder, signature)


def verify_folder(folder: Path, public_key: str | os.PathLike) -> None:
    """Raise ArtifactError unless ``folder`` (an extracted bundle) carries a signature by the
    private half of ``public_key`` over exactly the files it holds."""
    model_signing = require("model_signing", "signing")
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

    signature = folder / SIGNATURE
    if not Path(public_key).is_file():
        raise InvalidOptionError(f"--trusted-key: no public key at '{public_key}'")
    if not signature.is_file():
        raise ArtifactError(f"the bundle is not signed (it has no {SIGNATURE}) and --trusted-key was given: refusing "
                            "it; sign it with 'edgeport package ... --sign KEY'")
    try:
        config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key))
    except (ValueError, TypeError, AttributeError, UnsupportedAlgorithm):
        raise InvalidOptionError(f"--trusted-key: '{public_key}' is not a PEM elliptic-curve public key (P-256, "
                                 "P-384 or P-521)") from None
    config.set_hashing_config(hashing_config())
    try:
        with contextlib.redirect_stdout(io.StringIO()):    # it print()s a warning for signatures without a key hint
            config.verify(folder, signature)
    except InvalidSignature:
        raise ArtifactError("the bundle's signature does not verify with the trusted key: it was signed by another "
                            "key, or the signature was edited") from None
    except ValueError as exc:
        raise ArtifactError(_explain(str(exc))) from None
    except (KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"the bundle's {SIGNATURE} is malformed ({type(exc).__name__})") from None


def _explain(message: str) -> str:
    if message.startswith("Key mismatch"):
        return "the bundle was signed with another key than the trusted one"
    if message.startswith("Signature mismatch"):
        # The message is str() of a list: an entry whose digest bytes hold both kinds of
        # quote is written with escaped quotes (\'name\'), so a quote may follow a backslash.
        changed = re.findall(r"Hash mismatch for \\?'([^'\\]+)\\?'", message)
        added = re.findall(r"Extra files found in model \\?'[^']*?\\?': ([^\"\]'\\]+)", message)
        removed = re.findall(r"Missing files in model \\?'[^']*?\\?': ([^\"\]'\\]+)", message)
        parts = ([f"changed: {', '.join(changed[:5])}"] if changed else []) + \
                ([f"added: {added[0]}"] if added else []) + ([f"removed: {removed[0]}"] if removed else [])
        return f"the bundle's files were modified after it was signed ({'; '.join(parts) or 'contents differ'})"
    first = message.splitlines()[0] if message else "unreadable"
    return f"the bundle's {SIGNATURE} is not a valid signature ({first[:160]})"
