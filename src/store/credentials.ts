/**
 * The TLS material and the password of the etcd connections (etcd.tls and etcd.auth in
 * fitha.toml), read from their files once, when fitha connects. The configuration schema only
 * checks the shape of the paths: `fitha config check` runs offline, maybe on a machine without
 * the files. Here every problem is named by its key, all at once, before any connection is made.
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import type { FithaConfig } from "../config/fitha-config.ts";
import { errorMessage, ExitCode, FithaError } from "../errors.ts";
import { planes } from "../config/fitha-config.ts";

/** A value that must never reach a log line, an error message or a JSON document. */
export class Secret {
  readonly #value: string;

  constructor(value: string) {
    this.#value = value;
  }

  reveal(): string {
    return this.#value;
  }

  toString(): string {
    return "[secret]";
  }

  toJSON(): string {
    return "[secret]";
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return "[secret]";
  }
}

export interface EtcdCredentials {
  /** Absent: plain connections (or https:// endpoints checked against the system's CAs). */
  readonly tls?: { readonly rootCertificate: Buffer; readonly client?: { readonly certChain: Buffer; readonly privateKey: Buffer } };
  readonly auth?: { readonly username: string; readonly password: Secret };
}

/** Certificates and keys are a few kilobytes; anything larger is a wrong path. */
const maxPemBytes = 1024 * 1024;
const maxPasswordBytes = 4096;

export function readEtcdCredentials(etcd: FithaConfig["etcd"]): EtcdCredentials {
  const problems: string[] = [];
  const { ca_file, cert_file, key_file } = etcd.tls;
  const { username, password_file } = etcd.auth;

  if ((cert_file === "") !== (key_file === "")) problems.push("etcd.tls.cert_file and etcd.tls.key_file: set both or neither");
  if (cert_file !== "" && ca_file === "") problems.push("etcd.tls.cert_file: needs etcd.tls.ca_file (the CA that signed the etcd servers' certificates)");
  if (ca_file !== "") {
    for (const plane of planes) {
      const plain = etcd[plane].endpoints.find((endpoint) => !endpoint.startsWith("https://"));
      if (plain !== undefined) problems.push(`etcd.tls.ca_file is set, but etcd.${plane}.endpoints has ${JSON.stringify(plain)}: TLS needs https://`);
    }
  }
  if ((username === "") !== (password_file === "")) problems.push("etcd.auth.username and etcd.auth.password_file: set both or neither");

  const read = (key: string, path: string, maxBytes: number): Buffer | undefined => {
    if (path === "") return undefined;
    const content = readSmallFile(path, maxBytes);
    if (typeof content === "string") {
      problems.push(`${key}: ${JSON.stringify(path)}: ${content}`);
      return undefined;
    }
    return content;
  };
  /** The file if `parse` accepts it (the same OpenSSL that gRPC will use), else a problem. */
  const parsed = <T>(key: string, path: string, what: string, parse: (pem: Buffer) => T): { pem: Buffer; value: T } | undefined => {
    const pem = read(key, path, maxPemBytes);
    if (pem === undefined) return undefined;
    try {
      return { pem, value: parse(pem) };
    } catch (error) {
      problems.push(`${key}: ${JSON.stringify(path)}: not ${what} (${errorMessage(error)})`);
      return undefined;
    }
  };
  const ca = parsed("etcd.tls.ca_file", ca_file, "a PEM certificate", (pem) => new X509Certificate(pem));
  const cert = parsed("etcd.tls.cert_file", cert_file, "a PEM certificate", (pem) => new X509Certificate(pem));
  const key = parsed("etcd.tls.key_file", key_file, "a PEM private key", (pem) => createPrivateKey(pem));
  if (cert !== undefined && key !== undefined && !cert.value.checkPrivateKey(key.value)) {
    problems.push(`etcd.tls.key_file: ${JSON.stringify(key_file)} is not the key of the certificate in ${JSON.stringify(cert_file)}`);
  }
  const password = passwordOf(read("etcd.auth.password_file", password_file, maxPasswordBytes), problems);

  if (problems.length > 0) throw new FithaError(problems.join("\n"), ExitCode.usage);
  return {
    ...(ca === undefined ? {} : { tls: { rootCertificate: ca.pem, ...(cert === undefined || key === undefined ? {} : { client: { certChain: cert.pem, privateKey: key.pem } }) } }),
    ...(password === undefined ? {} : { auth: { username, password } }),
  };
}

/** The file's bytes, or what is wrong with it in words. */
function readSmallFile(path: string, maxBytes: number): Buffer | string {
  try {
    const stat = statSync(path);
    if (!stat.isFile()) return "not a regular file";
    if (stat.size === 0) return "empty";
    if (stat.size > maxBytes) return `${stat.size} bytes, more than the ${maxBytes} allowed`;
    return readFileSync(path);
  } catch (error) {
    const code = (error as { code?: unknown } | null)?.code;
    if (code === "ENOENT") return "no such file";
    if (code === "EACCES") return "permission denied";
    return `cannot read (${typeof code === "string" ? code : String(error)})`;
  }
}

/** One line; a final newline (as `echo pw > file` leaves) is not part of it. */
function passwordOf(content: Buffer | undefined, problems: string[]): Secret | undefined {
  if (content === undefined) return undefined;
  const text = content.toString("utf8").replace(/\r?\n$/, "");
  // The problem never quotes the content: it is a password.
  if (text === "" || /[\r\n]/.test(text)) {
    problems.push("etcd.auth.password_file: expected the password on one line");
    return undefined;
  }
  return new Secret(text);
}
