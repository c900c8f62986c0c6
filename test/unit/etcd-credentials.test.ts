/**
 * etcd.tls and etcd.auth: read from their files when fitha connects, every problem named by its
 * key at once, the password never shown. (TLS against a real etcd is tested separately.)
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { parseConfig } from "../../src/config/load.ts";
import { ExitCode, FithaError } from "../../src/errors.ts";
import { connectPlane, type EtcdSettings } from "../../src/store/cluster.ts";
import { readEtcdCredentials } from "../../src/store/credentials.ts";
import { tempDir, type TempDir } from "../helpers/tmp.ts";

let dir: TempDir | undefined;
const file = (name: string) => join(dir!.path, name);

beforeAll(async () => {
  dir = await tempDir("credentials");
  for (const name of ["server", "client", "other"]) {
    await Bun.$`openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ${file(`${name}.key`)} -out ${file(`${name}.pem`)} -days 1 -subj /CN=${name}`.quiet();
  }
  await Bun.write(file("password"), "s3cret-Pa55\n");
  await Bun.write(file("two-lines"), "s3cret\nmore\n");
  await Bun.write(file("empty"), "");
  await Bun.write(file("junk.pem"), "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n");
  await mkdir(file("a-directory"));
});
afterAll(async () => {
  await dir?.remove();
});

function settings(options: { tls?: Record<string, string>; auth?: Record<string, string>; scheme?: "http" | "https" }): EtcdSettings {
  const endpoints = `endpoints = ["${options.scheme ?? "https"}://127.0.0.1:2379"]`;
  const table = (name: string, values: Record<string, string> = {}) => [`[etcd.${name}]`, ...Object.entries(values).map(([k, v]) => `${k} = ${JSON.stringify(v)}`)];
  return parseConfig("test.toml", ["[etcd]", ...["management", "storage", "service"].flatMap((plane) => [`[etcd.${plane}]`, endpoints]), ...table("tls", options.tls), ...table("auth", options.auth)].join("\n")).etcd;
}

function problems(etcd: EtcdSettings): string[] {
  try {
    readEtcdCredentials(etcd);
  } catch (error) {
    expect(error).toBeInstanceOf(FithaError);
    expect((error as FithaError).exitCode).toBe(ExitCode.usage);
    return (error as Error).message.split("\n");
  }
  throw new Error("expected the credentials to be refused");
}

describe("etcd credentials", () => {
  test("none configured: plain connections, as before", () => {
    const etcd = settings({ scheme: "http" });
    expect(etcd.tls).toEqual({ ca_file: "", cert_file: "", key_file: "" });
    expect(etcd.auth).toEqual({ username: "", password_file: "" });
    expect(readEtcdCredentials(etcd)).toEqual({});
    connectPlane(etcd, "management").close();
  });

  test("CA, client certificate and password are read; the password shows nowhere", async () => {
    const etcd = settings({ tls: { ca_file: file("server.pem"), cert_file: file("client.pem"), key_file: file("client.key") }, auth: { username: "fitha", password_file: file("password") } });
    const credentials = readEtcdCredentials(etcd);
    expect(credentials.tls?.rootCertificate).toEqual(Buffer.from(await Bun.file(file("server.pem")).arrayBuffer()));
    expect(credentials.tls?.client?.certChain).toEqual(Buffer.from(await Bun.file(file("client.pem")).arrayBuffer()));
    expect(credentials.auth?.username).toBe("fitha");
    expect(credentials.auth?.password.reveal()).toBe("s3cret-Pa55");
    for (const shown of [JSON.stringify(credentials), Bun.inspect(credentials), String(credentials.auth?.password), `${credentials.auth?.password}`]) {
      expect(shown).not.toContain("s3cret");
    }
    connectPlane(etcd, "management", credentials).close();
    connectPlane(etcd, "storage").close(); // reads them itself
  });

  test("the schema takes absolute paths or nothing, and user names without spaces", () => {
    const refused = (text: string) => {
      try {
        parseConfig("test.toml", `[etcd.management]\nendpoints = ["http://a:1"]\n[etcd.storage]\nendpoints = ["http://a:1"]\n[etcd.service]\nendpoints = ["http://a:1"]\n${text}`);
      } catch (error) {
        return (error as Error).message;
      }
      throw new Error("expected the config to be refused");
    };
    expect(refused(`[etcd.tls]\nca_file = "ca.pem"`)).toBe('test.toml: etcd.tls.ca_file: expected an absolute file path, or "" for none, got "ca.pem"');
    expect(refused(`[etcd.auth]\nusername = "fitha admin"`)).toStartWith("test.toml: etcd.auth.username: expected a user name of printable ASCII characters without spaces");
    expect(refused(`[etcd.auth]\npassword = "plain"`)).toBe("test.toml: etcd.auth.password: unknown key");
  });

  test("inconsistent settings: every problem at once, each naming its key", () => {
    expect(problems(settings({ scheme: "http", tls: { ca_file: file("server.pem"), cert_file: file("client.pem") }, auth: { username: "fitha" } }))).toEqual([
      "etcd.tls.cert_file and etcd.tls.key_file: set both or neither",
      'etcd.tls.ca_file is set, but etcd.management.endpoints has "http://127.0.0.1:2379": TLS needs https://',
      'etcd.tls.ca_file is set, but etcd.storage.endpoints has "http://127.0.0.1:2379": TLS needs https://',
      'etcd.tls.ca_file is set, but etcd.service.endpoints has "http://127.0.0.1:2379": TLS needs https://',
      "etcd.auth.username and etcd.auth.password_file: set both or neither",
    ]);
    expect(problems(settings({ tls: { cert_file: file("client.pem"), key_file: file("client.key") } }))).toEqual([
      "etcd.tls.cert_file: needs etcd.tls.ca_file (the CA that signed the etcd servers' certificates)",
    ]);
  });

  test("files missing, unreadable, empty, not PEM, or not matching: named by key and path", () => {
    const lines = problems(
      settings({
        tls: { ca_file: file("missing.pem"), cert_file: file("a-directory"), key_file: file("empty") },
        auth: { username: "fitha", password_file: file("two-lines") },
      }),
    );
    expect(lines).toEqual([
      `etcd.tls.ca_file: "${file("missing.pem")}": no such file`,
      `etcd.tls.cert_file: "${file("a-directory")}": not a regular file`,
      `etcd.tls.key_file: "${file("empty")}": empty`,
      "etcd.auth.password_file: expected the password on one line",
    ]);
    expect(lines.join("\n")).not.toContain("s3cret");
    const [junk, mismatch] = [
      problems(settings({ tls: { ca_file: file("junk.pem") } })),
      problems(settings({ tls: { ca_file: file("server.pem"), cert_file: file("client.pem"), key_file: file("other.key") } })),
    ];
    expect(junk).toHaveLength(1);
    expect(junk[0]).toStartWith(`etcd.tls.ca_file: "${file("junk.pem")}": not a PEM certificate (`);
    expect(mismatch).toEqual([`etcd.tls.key_file: "${file("other.key")}" is not the key of the certificate in "${file("client.pem")}"`]);
  });
});
