/**
 * Certificates for TLS tests, made with openssl in a test's temp dir: a CA, server certificates
 * for loopback (subjectAltName IP:127.0.0.1: Go's TLS, etcd's, ignores the common name) and
 * client certificates signed by that CA. EC P-256 keys: made in milliseconds.
 */
import { join } from "node:path";

export interface CertificateAuthority {
  readonly name: string;
  /** The CA's certificate (PEM): what clients and servers trust. */
  readonly certFile: string;
  readonly keyFile: string;
  /** A certificate signed by this CA: for a server (IP:127.0.0.1) or a client (its CN is the name). */
  issue(name: string, use: "server" | "client"): Promise<CertificateFiles>;
}

export interface CertificateFiles {
  readonly certFile: string;
  readonly keyFile: string;
}

const validDays = 1;

export async function createCa(dir: string, name: string): Promise<CertificateAuthority> {
  const certFile = join(dir, `${name}.pem`);
  const keyFile = join(dir, `${name}.key`);
  await Bun.$`openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ${keyFile} -out ${certFile} -days ${validDays} -subj /CN=${name} -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign`.quiet();
  return {
    name,
    certFile,
    keyFile,
    async issue(subject, use) {
      const files = { certFile: join(dir, `${subject}.pem`), keyFile: join(dir, `${subject}.key`) };
      const request = join(dir, `${subject}.csr`);
      const extensions = join(dir, `${subject}.ext`);
      await Bun.write(
        extensions,
        use === "server" ? "subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n" : "extendedKeyUsage = clientAuth\n",
      );
      await Bun.$`openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ${files.keyFile} -out ${request} -subj /CN=${subject}`.quiet();
      await Bun.$`openssl x509 -req -in ${request} -CA ${certFile} -CAkey ${keyFile} -CAcreateserial -out ${files.certFile} -days ${validDays} -extfile ${extensions}`.quiet();
      return files;
    },
  };
}
