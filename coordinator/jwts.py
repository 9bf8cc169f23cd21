"""JWTs signed by the operator: HS256 with a shared secret, or RS256 checked against a PEM key or JWKS file.

Claims: ``tenant`` (required), ``scopes`` (a list, or a space-separated ``scope`` string), ``sub`` (who is
recorded as deciding), ``exp`` (required). No other algorithm is accepted, so a token cannot pick its own
(``alg: none``, or HS256 signed with the RS256 public key).
"""

from __future__ import annotations

import json
import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from bus.errors import CogoError, ConfigError, Unauthenticated
from bus.settings import Settings
from coordinator.keys import SCOPES, TENANT_PATTERN, Principal

log = logging.getLogger(__name__)


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts separated by dots."""
    return token.count(".") == 2


def jwt_principal(token: str, settings: Settings) -> Principal:
    """The principal a verified JWT names.

    Raises:
        Unauthenticated: ``auth.invalid`` (bad signature, expired, malformed, missing claims) or
            ``auth.jwt_disabled`` (no JWT key is configured).
    """
    import jwt

    try:
        keys = _verification_keys(settings)
    except ConfigError as exc:  # the operator's key file: say so in the log, not to the caller
        log.error("JWTs cannot be verified: %s", exc)
        raise CogoError("JWTs cannot be verified right now (the operator's key file is unusable)",
                        code="auth.unavailable") from None
    if not keys:
        raise Unauthenticated("JWTs are not accepted here (no COGO_JWT_HS256_SECRET or COGO_JWT_PUBLIC_KEY_FILE)",
                              code="auth.jwt_disabled")
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError as exc:
        raise Unauthenticated(f"the token is not a valid JWT: {exc}", code="auth.invalid") from None
    last: Exception | None = None
    for algorithm, key, key_id in keys:
        if kid is not None and key_id is not None and kid != key_id:
            continue
        try:
            claims = jwt.decode(token, key, algorithms=[algorithm], options={"require": ["exp", "tenant"]})
            return _principal(claims)
        except jwt.PyJWTError as exc:
            last = exc
    raise Unauthenticated(f"the token was refused: {last or 'no key matches its kid'}", code="auth.invalid")


def _principal(claims: dict[str, Any]) -> Principal:
    tenant = claims.get("tenant")
    if not isinstance(tenant, str) or not re.fullmatch(TENANT_PATTERN, tenant):
        raise Unauthenticated("the token's tenant claim is malformed", code="auth.invalid")
    raw = claims.get("scopes", claims.get("scope", ""))
    scopes = raw.split() if isinstance(raw, str) else raw
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise Unauthenticated("the token's scopes claim must be a list or a space-separated string",
                              code="auth.invalid")
    sub = claims.get("sub")
    name = f"jwt:{sub}" if isinstance(sub, str) and sub else f"jwt:{tenant}"
    return Principal(tenant=tenant, scopes=frozenset(s for s in scopes if s in SCOPES), name=name[:128])


def _verification_keys(settings: Settings) -> list[tuple[str, Any, str | None]]:
    keys: list[tuple[str, Any, str | None]] = []
    if settings.jwt_hs256_secret:
        keys.append(("HS256", settings.jwt_hs256_secret, None))
    path = Path(settings.jwt_public_key_file)
    if str(path) not in ("", "."):
        try:
            stamp = path.stat().st_mtime_ns
        except OSError as exc:
            raise ConfigError(f"COGO_JWT_PUBLIC_KEY_FILE {path} cannot be read: {exc.strerror}") from exc
        keys.extend(_public_keys(str(path), stamp))
    return keys


@lru_cache(maxsize=8)
def _public_keys(path: str, _mtime_ns: int) -> tuple[tuple[str, Any, str | None], ...]:
    """RS256 keys from a PEM public key or a JWKS document (re-read when the file changes)."""
    from jwt.algorithms import RSAAlgorithm

    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
            return tuple(("RS256", RSAAlgorithm.from_jwk(json.dumps(jwk)), jwk.get("kid"))
                         for jwk in doc.get("keys", [doc]) if jwk.get("kty") == "RSA")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"COGO_JWT_PUBLIC_KEY_FILE {path} is not a valid JWKS: {exc}") from exc
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    try:
        return (("RS256", load_pem_public_key(text.encode()), None),)
    except ValueError as exc:
        raise ConfigError(f"COGO_JWT_PUBLIC_KEY_FILE {path} is not a PEM public key: {exc}") from exc
