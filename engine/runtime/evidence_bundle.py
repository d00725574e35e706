"""Evidence bundles: a run's record chain and records in one JSON file that anyone can check.

A bundle is optionally signed with Ed25519 and checked offline (``wfe export``, ``wfe verify
--bundle``).

A bundle holds the run, its stages, its annotations and the chain's links with their hashes,
the chain head, and a sha256 of each of the run's Temporal executions' event histories that
the server still had. Its signature (``signature.value``) is Ed25519 over the canonical JSON
(:mod:`engine.core.evidence`) of the bundle without its ``signature`` member; ``signature``
also carries the public key, but a reader checks against a key they got elsewhere
(``--public-key``): a bundle naming its own key proves only that it was not changed since
someone signed it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from engine.core.evidence import BadRecord, ChainVerification, canonical_json, normal
from engine.store.chain import ANNOTATION_FIELDS
from engine.store.chain_check import (
    LINK_COLUMNS,
    RUN_COLUMNS,
    STAGE_COLUMNS,
    ChainRecords,
    check_chain,
)

__all__ = [
    "FORMAT",
    "BundleVerification",
    "build_bundle",
    "new_key_pair",
    "sign_bundle",
    "verify_bundle",
]

FORMAT = "wfe-evidence-bundle/1"


def build_bundle(
    records: ChainRecords, run: Mapping[str, Any], histories: list[dict[str, Any]]
) -> dict[str, Any]:
    """The bundle of a run, unsigned.

    ``records`` is its chain, ``run`` its public record (for a reader) and ``histories`` one
    ``{"workflow_id", "run_id", "events", "sha256"}`` per execution.
    """
    bundle: dict[str, Any] = normal(
        {
            "format": FORMAT,
            "workflow_run_id": records.run["id"],
            "run": dict(run),
            "chain": {
                "head": records.run["chain_head"],
                "length": records.run["chain_length"],
                "run": {name: records.run[name] for name in RUN_COLUMNS},
                "links": [{k: link[k] for k in LINK_COLUMNS} for link in records.links],
                "annotations": [
                    {k: row[k] for k in ANNOTATION_FIELDS} for row in records.annotations.values()
                ],
                "stages": [{k: row[k] for k in STAGE_COLUMNS} for row in records.stages.values()],
            },
            "temporal_histories": histories,
        }
    )
    return bundle


def _signed_text(bundle: Mapping[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in bundle.items() if k != "signature"}).encode()


def sign_bundle(bundle: dict[str, Any], private_key_pem: bytes) -> dict[str, Any]:
    """``bundle`` with an Ed25519 ``signature`` by the PEM private key."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the signing key is not an Ed25519 private key (make one: wfe keys new)")
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = {
        "algorithm": "ed25519",
        "public_key": public.decode(),
        "value": key.sign(_signed_text(bundle)).hex(),
    }
    return {**bundle, "signature": signature}


def new_key_pair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as PEM: (private, public)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@dataclass(frozen=True)
class BundleVerification:
    """What ``wfe verify --bundle`` found: the chain's check, and the signature's."""

    chain: ChainVerification
    signed: bool
    signature_ok: bool | None
    """None when there was no signature or no key to check it with."""
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """The chain holds, and so does the signature when a key was given."""
        return self.problem is None and self.chain.ok and self.signature_ok is not False

    def to_json(self) -> dict[str, Any]:
        """The verification as JSON (``--json``)."""
        return {
            **self.chain.to_json(),
            "ok": self.ok,
            "signed": self.signed,
            "signature_ok": self.signature_ok,
            "problem": self.problem,
        }


def verify_bundle(text: bytes, public_key_pem: bytes | None) -> BundleVerification:
    """Check a bundle's chain and, with a public key, its signature.

    The chain is recomputed from what the bundle holds; nothing but the bundle is read.
    """
    try:
        bundle = json.loads(text)
        chain = bundle["chain"]
        run = dict(chain["run"], chain_head=chain["head"], chain_length=chain["length"])
        records = ChainRecords(
            run,
            list(chain["links"]),
            {row["id"]: row for row in chain["annotations"]},
            {row["id"]: row for row in chain["stages"]},
        )
    except (ValueError, KeyError, TypeError) as exc:
        bad = BadRecord(None, "bundle", None, None, f"not an evidence bundle: {exc}")
        return BundleVerification(
            ChainVerification("?", False, 0, None, bad), False, None, str(exc)
        )
    verification = check_chain(records)
    signature = bundle.get("signature")
    if signature is None:
        problem = "the bundle is not signed" if public_key_pem is not None else None
        return BundleVerification(verification, False, None, problem)
    if public_key_pem is None:
        return BundleVerification(verification, True, None)
    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, Ed25519PublicKey):
        return BundleVerification(verification, True, False, "not an Ed25519 public key")
    try:
        key.verify(bytes.fromhex(signature["value"]), _signed_text(bundle))
    except (InvalidSignature, ValueError, KeyError, TypeError):
        problem = "the signature does not match this public key: changed, or signed by another"
        return BundleVerification(verification, True, False, problem)
    return BundleVerification(verification, True, True)
