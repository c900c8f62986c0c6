/**
 * describeEtcdError on failures as grpc-js and etcd word them (messages recorded from real runs;
 * test/integration/etcd-tls.test.ts produces the commonest ones against real etcds): the cause
 * without gRPC's boilerplate, and for TLS and auth failures what to fix in fitha.toml.
 */
import { describe, expect, test } from "bun:test";
import { describeEtcdError } from "../../src/store/cluster.ts";

const unavailable = (cause: string) => new Error(`14 UNAVAILABLE: No connection established. Last error: ${cause}. Resolution note: `);

describe("describeEtcdError", () => {
  test("a plain cause is shown as is, without gRPC's wrapping or its timestamps", () => {
    expect(describeEtcdError(unavailable("Error: connect ECONNREFUSED 127.0.0.1:1"))).toBe("connect ECONNREFUSED 127.0.0.1:1");
    expect(describeEtcdError(new Error("13 INTERNAL: something (2026-12-07T08:59:03.460Z)"))).toBe("13 INTERNAL: something");
  });

  test("TLS and auth failures say what to fix, naming the keys", () => {
    const cases: Array<[Error, string]> = [
      [unavailable("error:10000412:SSL routines:OPENSSL_internal:SSLV3_ALERT_BAD_CERTIFICATE (2026-12-07T08:59:03.460Z)"), "error:10000412:SSL routines:OPENSSL_internal:SSLV3_ALERT_BAD_CERTIFICATE: the etcd server refused this client's certificate"],
      [unavailable("Error: unable to verify the first certificate"), "unable to verify the first certificate: the etcd server's certificate is not signed by the CA in etcd.tls.ca_file"],
      [unavailable("Error: self-signed certificate"), "self-signed certificate: the etcd server's certificate is not signed by the CA in etcd.tls.ca_file"],
      [unavailable("Error: certificate has expired"), "certificate has expired: a certificate is outside its validity period"],
      [unavailable("Error: Hostname/IP does not match certificate's altnames: Host: localhost. is not cert's CN: server"), "the etcd server's certificate does not name the address of the endpoint"],
      [unavailable("Error: Client network socket disconnected before secure TLS connection was established"), "if it serves plain http, use http:// and leave etcd.tls empty"],
      [unavailable("Failed to connect (2026-12-07T08:59:03.438Z)"), "Failed to connect: no gRPC connection; if the etcd server serves TLS, its endpoints must be https:// with etcd.tls.ca_file set"],
      [new Error("3 INVALID_ARGUMENT: etcdserver: authentication failed, invalid user ID or password"), "check etcd.auth.username and the password in etcd.auth.password_file"],
      [new Error("3 INVALID_ARGUMENT: etcdserver: user name is empty"), "the etcd cluster has authentication enabled: set etcd.auth.username and etcd.auth.password_file"],
      [new Error("7 PERMISSION_DENIED: etcdserver: permission denied"), "`fitha etcd roles` prints the roles fitha needs"],
    ];
    for (const [error, expected] of cases) expect(describeEtcdError(error)).toContain(expected);
  });
});
