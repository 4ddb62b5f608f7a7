#!/usr/bin/env python3
"""A case app calling kluis on behalf of the employee at the screen.

The app authenticates itself with its client certificate (mutual TLS; its DNS or URI name is in a
`[[service]]` table of kluis's configuration) and passes the employee's OpenID Connect access
token, as the app received it from the identity provider, in the `x-kluis-user` metadata. kluis
decides with the employee's roles that the app may act for, and writes both to the audit trail.

Needs `pip install grpcio grpcio-tools`. The stubs are generated from `proto/` at every start,
into a temporary directory (nothing generated is kept in the repository, and they always match
the contract next to this file).

Try it against the development server (`cargo run -- serve --dev`), with a kluis token and no
TLS:

    KLUIS_TOKEN=$(jq -r '."customer-service"' .kluis-dev/dev-tokens.json) \
    python examples/python/case_app.py [RECORD_ID]

Run it as a case app does in production:

    KLUIS_SERVER=kluis.corp.example:50051 \
    KLUIS_CA=/etc/case-app/kluis-ca.pem \
    KLUIS_CLIENT_CERT=/etc/case-app/client.pem KLUIS_CLIENT_KEY=/etc/case-app/client.key \
    KLUIS_USER_TOKEN_FILE=/run/case-app/session-token \
    python examples/python/case_app.py [RECORD_ID]

The employee's token is read from a file (or `KLUIS_USER_TOKEN`) only to keep this example short:
a real app takes it from the employee's session and never logs it.
"""

import importlib
import os
import pathlib
import sys
import tempfile

import grpc

PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"


def stubs():
    """Generates the Python stubs of kluis.v1 into a temporary directory and imports them."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="kluis-stubs-")
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{pathlib.Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_DIR / "kluis" / "v1" / "vault.proto"),
    ]
    if protoc.main(args) != 0:
        sys.exit(f"cannot generate the stubs from {PROTO_DIR}")
    sys.path.insert(0, out)
    return (
        importlib.import_module("kluis.v1.vault_pb2"),
        importlib.import_module("kluis.v1.vault_pb2_grpc"),
    )


vault_pb2, vault_pb2_grpc = stubs()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def channel():
    """A TLS channel that presents the app's client certificate; without `KLUIS_CA`, a plain
    channel to a development server."""
    if "KLUIS_CA" not in os.environ:
        return grpc.insecure_channel(os.environ.get("KLUIS_SERVER", "127.0.0.1:50051"))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(os.environ["KLUIS_CA"]),
        private_key=read(os.environ["KLUIS_CLIENT_KEY"]),
        certificate_chain=read(os.environ["KLUIS_CLIENT_CERT"]),
    )
    options = []
    # When the server is reached by an address its certificate does not name (a test on
    # 127.0.0.1 with a certificate for `localhost`, say).
    if os.environ.get("KLUIS_SERVER_NAME"):
        options.append(("grpc.ssl_target_name_override", os.environ["KLUIS_SERVER_NAME"]))
    return grpc.secure_channel(
        os.environ.get("KLUIS_SERVER", "127.0.0.1:50051"), credentials, options
    )


def credentials():
    """The metadata of every call: a kluis token (`KLUIS_TOKEN`), or the employee's token."""
    if os.environ.get("KLUIS_TOKEN"):
        return [("authorization", f"Bearer {os.environ['KLUIS_TOKEN']}")]
    return [("x-kluis-user", employee_token())]


def employee_token():
    token = os.environ.get("KLUIS_USER_TOKEN")
    if token is None:
        token = read(os.environ["KLUIS_USER_TOKEN_FILE"]).decode().strip()
    return token


def main():
    metadata = credentials()
    with channel() as ch:
        vault = vault_pb2_grpc.VaultStub(ch)
        try:
            me = vault.WhoAmI(vault_pb2.WhoAmIRequest(), metadata=metadata, timeout=10)
        except grpc.RpcError as e:
            # UNAUTHENTICATED: the token is expired, not yet valid, of another issuer or
            # audience, badly signed, or the certificate names no `[[service]]`; the message
            # says which, never the token. A failed TLS handshake (no or a wrong client
            # certificate) shows as UNAVAILABLE.
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                server = os.environ.get("KLUIS_SERVER", "127.0.0.1:50051")
                print(
                    f"cannot reach kluis at {server}: is it running there (KLUIS_SERVER names "
                    f"another address), and with TLS do KLUIS_CA and the client certificate "
                    f"fit? ({e.details()})",
                    file=sys.stderr,
                )
                return 1
            print(f"kluis refused: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        if not me.service_id:
            print(f"{me.principal_id}, roles: {', '.join(me.roles) or 'none'}")
            return 0 if len(sys.argv) < 2 else read_record(vault, metadata, sys.argv[1])
        print(f"acting for {me.principal_id} ({me.employee_display_name or me.employee_sub})")
        print(f"  through service {me.service_id}, roles: {', '.join(me.roles) or 'none'}")
        if len(sys.argv) < 2:
            return 0
        return read_record(vault, metadata, sys.argv[1])


def read_record(vault, metadata, record_id):
    """Reads one record for customer service: the fields it may see, and those withheld."""
    context = vault_pb2.AccessContext(
        purpose="customer-service",
        case_ref="KS-2026-0815",
        justification="tenant called about their contact details",
        channel="phone",
    )
    try:
        record = vault.GetRecord(
            vault_pb2.GetRecordRequest(context=context, record_id=record_id),
            metadata=metadata,
            timeout=10,
        )
    except grpc.RpcError as e:
        # PERMISSION_DENIED: the policy refused for the roles the employee has and the app
        # may act for; the refusal is on the audit trail with both names.
        print(f"kluis refused: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    for field in record.fields:
        print(f"  {field.name} ({field.category})")
    for withheld in record.withheld:
        print(f"  withheld: {withheld.name}: {withheld.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
