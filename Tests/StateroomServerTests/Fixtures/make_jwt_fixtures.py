#!/usr/bin/env python3
"""Keys and tokens for Tests/StateroomServerTests/JWTTests.swift, made by a third-party JWT
implementation (PyJWT 2.x with `cryptography`), so that the Swift verifier is tested against
tokens it did not make.

    python3 Tests/StateroomServerTests/Fixtures/make_jwt_fixtures.py            # print the Swift block
    python3 Tests/StateroomServerTests/Fixtures/make_jwt_fixtures.py --write    # replace it in JWTTests.swift

The block (an `enum JWTFixtures`) goes between the `BEGIN GENERATED` and `END GENERATED` lines of
JWTTests.swift. Each run makes new keys (and ES256 signatures are randomised), so the output
differs from run to run; the tests only depend on the claims and times chosen here.

Only a few tokens are put together by hand, because PyJWT (rightly) refuses to make them: the
HS256 tokens keyed with a public key's PEM (the algorithm-confusion attack), duplicate member
names, and ES256 signatures of the wrong length. Those use the standard library's `hmac` and
`cryptography`'s signer.
"""
import base64
import datetime
import hashlib
import hmac
import json
import pathlib
import sys

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

NOW = 2_000_000_000  # the tests' clock (2033-05-18)
EXP = NOW + 3600
HMAC_SECRET = b"stateroom-test-secret-0123456789abcdef"
WRONG_SECRET = b"stateroom-test-secret-0123456789abcdeX"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pem_public(key) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def pem_private(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def self_signed(key, name: str) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=36500))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def hand_hs256(header_json: str, payload_json: str, key: bytes) -> str:
    """A compact HS256 JWS over exactly these JSON texts (PyJWT would re-serialise them)."""
    signing_input = b64(header_json.encode()) + "." + b64(payload_json.encode())
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP256R1())
rsa_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)
ec_p384 = ec.generate_private_key(ec.SECP384R1())
ec_k256 = ec.generate_private_key(ec.SECP256K1())
ed_key = ed25519.Ed25519PrivateKey.generate()

RSA_PUBLIC = pem_public(rsa_key)
EC_PUBLIC = pem_public(ec_key)

claims = {"sub": "alice", "rooms": ["lobby", "game-7"], "iat": NOW, "exp": EXP}
hs = lambda payload, **kw: jwt.encode(payload, HMAC_SECRET, algorithm="HS256", **kw)
rs = lambda payload, **kw: jwt.encode(payload, rsa_key, algorithm="RS256", **kw)
es = lambda payload, **kw: jwt.encode(payload, ec_key, algorithm="ES256", **kw)


def tampered(token: str, new_claims: dict) -> str:
    header, _, signature = token.split(".")
    return header + "." + b64(json.dumps(new_claims, separators=(",", ":")).encode()) + "." + signature


def es256_with_signature(payload: dict, make_signature) -> str:
    signing_input = b64(json.dumps({"alg": "ES256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(payload).encode())
    return signing_input + "." + b64(make_signature(signing_input.encode()))


def sized(target: int, below: bool) -> str:
    """An HS256 token as close to `target` bytes as base64 allows: at most (below) or above it."""
    best = None
    for pad in range(5500, 6500):
        t = hs({"sub": "alice", "exp": EXP, "pad": "x" * pad})
        if (len(t) <= target) if below else (len(t) > target):
            if best is None or (len(t) > len(best) if below else len(t) < len(best)):
                best = t
    return best


rs_claims = {"sub": "bob", "rooms": ["lobby"], "exp": EXP, "nbf": NOW - 1000}
rs_valid = rs(rs_claims)
es_valid = es({"sub": "carol", "exp": EXP})
hs_valid = hs(claims)

constants = [
    # Keys.
    ("hmacSecret", HMAC_SECRET.decode()),
    ("rsaPublicPEM", RSA_PUBLIC),
    ("rsaCertificatePEM", self_signed(rsa_key, "jwt-test-rsa")),
    ("rsaPrivatePEM", pem_private(rsa_key)),
    ("ecPublicPEM", EC_PUBLIC),
    ("ecCertificatePEM", self_signed(ec_key, "jwt-test-ec")),
    ("rsa1024PublicPEM", pem_public(rsa_1024)),
    ("ecP384PublicPEM", pem_public(ec_p384)),
    ("ecSecp256k1PublicPEM", pem_public(ec_k256)),
    ("ed25519PublicPEM", pem_public(ed_key)),
    # Valid tokens (sub, rooms, exp as in the test).
    ("hs256Valid", hs_valid),
    ("rs256Valid", rs_valid),
    ("es256Valid", es_valid),
    ("hs256LowercaseTyp", hs({"sub": "alice"}, headers={"typ": "jwt"})),
    ("hs256NoTyp", hs({"sub": "alice"}, headers={"typ": None})),
    ("hs256Subject1024", hs({"sub": "s" * 1024})),
    ("hs256EmptyRooms", hs({"sub": "alice", "rooms": []})),
    # Signatures that must not verify.
    ("hs256WrongSecret", jwt.encode(claims, WRONG_SECRET, algorithm="HS256")),
    ("hs256Tampered", tampered(hs_valid, {**claims, "sub": "mallory"})),
    ("rs256Tampered", tampered(rs_valid, {**rs_claims, "rooms": ["lobby", "admin"]})),
    ("es256Tampered", tampered(es_valid, {"sub": "mallory", "exp": EXP})),
    ("es256DERSignature", es256_with_signature(
        {"sub": "carol"}, lambda data: ec_key.sign(data, ec.ECDSA(hashes.SHA256())))),
    ("es256ShortSignature", es256_with_signature({"sub": "carol"}, lambda data: bytes(63))),
    # Algorithms.
    ("noneToken", jwt.encode({"sub": "alice", "exp": EXP}, None, algorithm="none")),
    ("noneUppercase", b64(b'{"alg":"NONE","typ":"JWT"}') + "." + b64(b'{"sub":"alice"}') + "."),
    ("hs256KeyedWithRSAPublicPEM", hand_hs256('{"alg":"HS256","typ":"JWT"}', '{"sub":"mallory"}', RSA_PUBLIC.encode())),
    ("hs256KeyedWithECPublicPEM", hand_hs256('{"alg":"HS256","typ":"JWT"}', '{"sub":"mallory"}', EC_PUBLIC.encode())),
    ("rs384", jwt.encode({"sub": "bob"}, rsa_key, algorithm="RS384")),
    ("ps256", jwt.encode({"sub": "bob"}, rsa_key, algorithm="PS256")),
    # Times (now = NOW).
    ("rs256ExpiredAtNow", rs({"sub": "bob", "exp": NOW})),
    ("rs256NotBeforeNowPlus100", rs({"sub": "bob", "nbf": NOW + 100})),
    ("es256FractionalExp", es({"sub": "carol", "exp": NOW + 0.5})),
    # Claims.
    ("hs256NoSub", hs({"rooms": ["lobby"], "exp": EXP})),
    ("hs256EmptySub", hs({"sub": ""})),
    ("hs256NumericSub", hs({"sub": 42})),
    ("hs256Subject1025", hs({"sub": "s" * 1025})),
    ("hs256StringExp", hs({"sub": "alice", "exp": str(EXP)})),
    ("hs256NullExp", hs({"sub": "alice", "exp": None})),
    ("hs256StringNbf", hs({"sub": "alice", "nbf": "soon"})),
    ("hs256RoomsString", hs({"sub": "alice", "rooms": "lobby"})),
    ("hs256RoomsNumbers", hs({"sub": "alice", "rooms": ["lobby", 7]})),
    ("hs256PayloadArray", hand_hs256('{"alg":"HS256"}', '["sub","alice"]', HMAC_SECRET)),
    ("hs256PayloadNotJSON", hand_hs256('{"alg":"HS256"}', 'sub=alice', HMAC_SECRET)),
    # Headers.
    ("hs256Crit", hs({"sub": "alice"}, headers={"crit": ["exp"]})),
    ("hs256TypAtJWT", hs({"sub": "alice"}, headers={"typ": "at+jwt"})),
    ("hs256DuplicateAlg", hand_hs256('{"alg":"HS256","alg":"none"}', '{"sub":"alice"}', HMAC_SECRET)),
    ("hs256DuplicateSub", hand_hs256('{"alg":"HS256"}', '{"sub":"alice","sub":"admin"}', HMAC_SECRET)),
    ("hs256EscapedDuplicateSub", hand_hs256('{"alg":"HS256"}', '{"sub":"alice","\\u0073ub":"admin"}', HMAC_SECRET)),
    ("hs256NestedRepeatedNames", hand_hs256('{"alg":"HS256"}', '{"sub":"alice","x":{"sub":1,"y":[{"sub":2}]},"y":"sub"}', HMAC_SECRET)),
    ("hs256HeaderArray", hand_hs256('["alg","HS256"]', '{"sub":"alice"}', HMAC_SECRET)),
    ("hs256AlgNumber", hand_hs256('{"alg":256}', '{"sub":"alice"}', HMAC_SECRET)),
    # Sizes.
    ("hs256AtLimit", sized(8192, below=True)),
    ("hs256OverLimit", sized(8192, below=False)),
]


def swift_literal(value: str) -> str:
    if "\n" in value:
        assert '"""' not in value and "\\" not in value
        return '"""\n' + value.rstrip("\n") + '\n"""'
    assert '"' not in value and "\\" not in value
    return '"' + value + '"'


def block() -> str:
    lines = ["// BEGIN GENERATED by Fixtures/make_jwt_fixtures.py (PyJWT %s); do not edit by hand." % jwt.__version__,
             "enum JWTFixtures {",
             "    static let now: Double = %d" % NOW,
             "    static let exp: Double = %d" % EXP]
    for name, value in constants:
        lines.append("    static let %s = %s" % (name, swift_literal(value).replace("\n", "\n    ")))
    lines += ["}", "// END GENERATED"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    out = block()
    if "--write" in sys.argv:
        test = pathlib.Path(__file__).resolve().parent.parent / "JWTTests.swift"
        text = test.read_text()
        start = text.index("// BEGIN GENERATED")
        end = text.index("// END GENERATED\n") + len("// END GENERATED\n")
        test.write_text(text[:start] + out + text[end:])
        print("wrote", test)
    else:
        sys.stdout.write(out)
