#!/usr/bin/env python3
"""A case app calling kluis on behalf of the employee at the screen.

The app authenticates itself with its client certificate (mutual TLS; its DNS or URI name is in a
`[[service]]` table of kluis's configuration) and passes the employee's OpenID Connect access
token, as the app received it from the identity provider, in the `x-kluis-user` metadata. kluis
decides with the employee's roles that the app may act for, and writes both to the audit trail.

Stubs (once, from the repository root; needs `pip install grpcio grpcio-tools`):

    python -m grpc_tools.protoc -I proto --python_out=examples/python \
        --grpc_python_out=examples/python proto/kluis/v1/vault.proto

Run:

    KLUIS_SERVER=kluis.corp.example:50051 \
    KLUIS_CA=/etc/case-app/kluis-ca.pem \
    KLUIS_CLIENT_CERT=/etc/case-app/client.pem KLUIS_CLIENT_KEY=/etc/case-app/client.key \
    KLUIS_USER_TOKEN_FILE=/run/case-app/session-token \
    python examples/python/case_app.py [RECORD_ID]

The employee's token is read from a file (or `KLUIS_USER_TOKEN`) only to keep this example short:
a real app takes it from the employee's session and never logs it.
"""

import os
import sys

import grpc

from kluis.v1 import vault_pb2, vault_pb2_grpc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def channel():
    """A TLS channel that presents the app's client certificate."""
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


def employee_token():
    token = os.environ.get("KLUIS_USER_TOKEN")
    if token is None:
        token = read(os.environ["KLUIS_USER_TOKEN_FILE"]).decode().strip()
    return token


def main():
    metadata = [("x-kluis-user", employee_token())]
    with channel() as ch:
        vault = vault_pb2_grpc.VaultStub(ch)
        try:
            me = vault.WhoAmI(vault_pb2.WhoAmIRequest(), metadata=metadata, timeout=10)
        except grpc.RpcError as e:
            # UNAUTHENTICATED: the token is expired, not yet valid, of another issuer or
            # audience, badly signed, or the certificate names no `[[service]]`; the message
            # says which, never the token. A failed TLS handshake (no or a wrong client
            # certificate) shows as UNAVAILABLE.
            print(f"kluis refused: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        print(f"acting for {me.principal_id} ({me.employee_display_name or me.employee_sub})")
        print(f"  through service {me.service_id}, roles: {', '.join(me.roles) or 'none'}")
        if len(sys.argv) < 2:
            return 0
        context = vault_pb2.AccessContext(
            purpose="customer-service",
            case_ref="KS-2026-0815",
            justification="tenant called about their contact details",
            channel="phone",
        )
        try:
            record = vault.GetRecord(
                vault_pb2.GetRecordRequest(context=context, record_id=sys.argv[1]),
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
