// Copyright 2026 the ocspbot authors. MIT license.

/**
 * A real ACME flow on 127.0.0.1: Debian's `pebble` (Let's Encrypt's test ACME
 * server) issues, Debian's `certbot` obtains and renews, and a responder of
 * ours answers OCSP for what pebble issued, so that a test can watch ocspbot
 * follow a certificate through certbot's own renewal and deploy hooks.
 *
 * Pebble runs with `PEBBLE_VA_ALWAYS_VALID=1`: it validates no challenge, so
 * certbot's manual plugin with a hook that does nothing is enough and no
 * privileged port is bound. Pebble makes a fresh root and intermediate at
 * every start and hands out both and their keys on its management interface;
 * its config puts our responder's URL in every certificate it issues, and
 * the responder signs with pebble's intermediate itself (no delegated signer)
 * through OpenSSL's own responder logic, as testca.ts does. Pebble speaks
 * HTTPS only, and Debian ships no certificate for it, so we make a TLS CA of
 * our own per start and hand it to certbot as `REQUESTS_CA_BUNDLE`.
 *
 * Nothing here reaches past 127.0.0.1: pebble validates nothing, and certbot
 * runs with a cleared environment (no proxy), its folders in a temp dir and
 * `--server` set, never the system's /etc/letsencrypt. Needs `pebble`,
 * `certbot` and `openssl` on PATH (`apt-get install pebble certbot`).
 *
 * @module
 */

import * as path from "node:path";
import { openssl } from "./testca.ts";

/** What our responder says of a serial. */
export type OcspStatus = "good" | "revoked" | "unknown";

/** Options for {@link startPebble}. */
export interface PebbleOptions {
  /**
   * Seconds a certificate pebble issues is valid (its
   * `certificateValidityPeriod`); pebble's default is five years.
   */
  certificateValidity?: number;
  /** More environment for pebble, e.g. `PEBBLE_CHAIN_LENGTH`. */
  env?: Record<string, string>;
}

const decoder = new TextDecoder();

/** Extensions of the TLS certificate pebble serves, and of the CA that signs it. */
const TLS_EXTENSIONS = `
[ req ]
distinguished_name = dn
[ dn ]
[ ca ]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ server ]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
`;

/** openssl's revocation reasons by their CRL reason code, as index.txt spells them. */
const REASONS = [
  "unspecified",
  "keyCompromise",
  "CACompromise",
  "affiliationChanged",
  "superseded",
  "cessationOfOperation",
  "certificateHold",
  "unspecified", // 7 is unused
  "removeFromCRL",
];

/** A port nobody listens on, for a server to take. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** index.txt's date format, YYMMDDHHMMSSZ. */
function indexDate(date: Date): string {
  return date.toISOString().replace(/[-:T]/g, "").slice(2, 14) + "Z";
}

/** A certificate's serial as openssl prints it: upper-case hex, whole bytes. */
export async function certSerial(cert: string): Promise<string> {
  const printed = decoder.decode(await openssl(["x509", "-in", cert, "-noout", "-serial"]));
  return printed.trim().replace(/^serial=/, "").toUpperCase();
}

/** Collects a child's output as it comes, so that its pipe never fills. */
async function collect(stream: ReadableStream<Uint8Array>, into: string[]): Promise<void> {
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) into.push(chunk);
}

/**
 * Our OCSP responder for pebble's certificates, listening before pebble
 * starts (its URL goes into pebble's config) and fetching pebble's
 * intermediate and key on the first request, since pebble makes them at
 * start. A serial's status is what {@link setStatus} said of it or else what
 * pebble's `/cert-status-by-serial/` says: "good" for any certificate pebble
 * issued, "revoked" once revoked through ACME, "unknown" for any other.
 */
export class PebbleResponder {
  readonly url: string;
  /** Requests answered so far, well-formed or not. */
  requests = 0;
  /** Minutes between thisUpdate and nextUpdate; 0 leaves nextUpdate out. */
  validityMinutes = 24 * 60;
  readonly #dir: string;
  readonly #server: Deno.HttpServer;
  readonly #management: (path: string) => Promise<Response>;
  #issuer: Promise<{ cert: string; key: string }> | undefined;
  readonly #overrides = new Map<string, OcspStatus>();
  #request = 0;

  private constructor(
    dir: string,
    server: Deno.HttpServer,
    port: number,
    management: (path: string) => Promise<Response>,
  ) {
    this.#dir = dir;
    this.#server = server;
    this.url = `http://127.0.0.1:${port}/`;
    this.#management = management;
  }

  /** Listens on a free port of 127.0.0.1; `management` GETs from pebble's interface. */
  static async start(
    dir: string,
    management: (path: string) => Promise<Response>,
  ): Promise<PebbleResponder> {
    const listening = Promise.withResolvers<number>();
    const server: Deno.HttpServer = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      onListen: ({ port }) => listening.resolve(port),
    }, (request): Promise<Response> => responder.#answer(request));
    const responder: PebbleResponder = new PebbleResponder(
      dir,
      server,
      await listening.promise,
      management,
    );
    return responder;
  }

  /**
   * From now on answers `status` for `serial` (hex, as {@link certSerial}
   * gives it) whatever pebble says; `undefined` asks pebble again.
   */
  setStatus(serial: string, status: OcspStatus | undefined): void {
    const key = serial.toUpperCase();
    if (status === undefined) this.#overrides.delete(key);
    else this.#overrides.set(key, status);
  }

  /** Pebble's intermediate and its key, as files, fetched once. */
  #loadIssuer(): Promise<{ cert: string; key: string }> {
    if (this.#issuer) return this.#issuer;
    const loading = (async () => {
      const cert = path.join(this.#dir, "pebble-intermediate.pem");
      const key = path.join(this.#dir, "pebble-intermediate.key");
      await Deno.writeTextFile(cert, await this.#fetchText("/intermediates/0"));
      await Deno.writeTextFile(key, await this.#fetchText("/intermediate-keys/0"), { mode: 0o600 });
      return { cert, key };
    })();
    // A failed fetch is tried again at the next request.
    loading.catch(() => this.#issuer = undefined);
    this.#issuer = loading;
    return loading;
  }

  async #fetchText(urlPath: string): Promise<string> {
    const response = await this.#management(urlPath);
    const text = await response.text();
    if (!response.ok) throw new Error(`pebble ${urlPath}: HTTP ${response.status}: ${text}`);
    return text;
  }

  /** An index.txt line for `serial`, or none for "unknown". */
  async #indexLine(serial: string): Promise<string | undefined> {
    const expiry = indexDate(new Date(Date.now() + 400 * 86400_000));
    let status = this.#overrides.get(serial);
    let revoked = indexDate(new Date(Date.now() - 3600_000)) + ",keyCompromise";
    if (status === undefined) {
      const response = await this.#management(`/cert-status-by-serial/${serial.toLowerCase()}`);
      if (response.status === 404) {
        await response.body?.cancel();
        status = "unknown";
      } else if (!response.ok) {
        throw new Error(`pebble cert-status-by-serial/${serial}: HTTP ${response.status}`);
      } else {
        const found = await response.json() as {
          Status: string;
          Reason?: number;
          RevokedAt?: string;
        };
        status = found.Status === "Revoked" ? "revoked" : "good";
        if (found.RevokedAt) {
          // Go's time.String(): "2019-07-13 00:13:20.418489956 +0000 UTC".
          const [day, time] = found.RevokedAt.split(" ");
          const at = new Date(`${day}T${time.slice(0, 8)}Z`);
          const reason = REASONS[found.Reason ?? 0] ?? "unspecified";
          revoked = `${indexDate(Number.isNaN(at.getTime()) ? new Date() : at)},${reason}`;
        }
      }
    }
    if (status === "unknown") return undefined;
    return [status === "good" ? "V" : "R", expiry, status === "good" ? "" : revoked, serial]
      .join("\t") + `\tunknown\t/CN=${serial}\n`;
  }

  async #answer(request: Request): Promise<Response> {
    this.requests++;
    let body: Uint8Array<ArrayBuffer>;
    if (request.method === "POST") body = new Uint8Array(await request.arrayBuffer());
    else {
      const encoded = decodeURIComponent(new URL(request.url).pathname.slice(1));
      try {
        body = Uint8Array.fromBase64(encoded);
      } catch {
        return new Response("not an OCSP request", { status: 400 });
      }
    }
    const index = path.join(this.#dir, `ocsp-index-${this.#request++}.txt`);
    try {
      let text: string;
      try {
        text = decoder.decode(await openssl(["ocsp", "-reqin", "-", "-req_text"], body));
      } catch {
        return new Response("not an OCSP request", { status: 400 });
      }
      const serials = [...text.matchAll(/Serial Number: ([0-9A-F]+)$/gm)].map((match) => match[1]);
      const issuer = await this.#loadIssuer();
      const lines = await Promise.all(serials.map((serial) => this.#indexLine(serial)));
      // One index per request: requests may be answered side by side.
      await Deno.writeTextFile(index, lines.filter(Boolean).join(""));
      await Deno.writeTextFile(`${index}.attr`, "unique_subject = no\n");
      const answer = await openssl([
        "ocsp",
        "-index",
        index,
        "-CA",
        issuer.cert,
        "-rsigner",
        issuer.cert,
        "-rkey",
        issuer.key,
        ...(this.validityMinutes > 0 ? ["-nmin", String(this.validityMinutes)] : []),
        "-reqin",
        "-",
        "-respout",
        "-",
      ], body);
      return new Response(answer, { headers: { "content-type": "application/ocsp-response" } });
    } catch (error) {
      return new Response(String(error), { status: 500 });
    } finally {
      await Deno.remove(index).catch(() => {});
      await Deno.remove(`${index}.attr`).catch(() => {});
    }
  }

  /** Stops listening. */
  async close(): Promise<void> {
    await this.#server.shutdown();
  }
}

/** A running pebble and our responder for it; `close()` ends both. */
export class Pebble {
  /** The folder given to {@link startPebble}; left for the caller to remove. */
  readonly dir: string;
  /** The ACME directory, for certbot's `--server`. */
  readonly directoryUrl: string;
  /** Pebble's management interface (roots, intermediates, their keys, statuses). */
  readonly managementUrl: string;
  /** The CA of pebble's HTTPS certificate: certbot's `REQUESTS_CA_BUNDLE`. */
  readonly tlsCa: string;
  /** The responder whose URL is in every certificate pebble issues. */
  readonly ocsp: PebbleResponder;
  readonly #child: Deno.ChildProcess;
  readonly #client: Deno.HttpClient;
  readonly #output: string[];
  readonly #collecting: Promise<unknown>;

  constructor(fields: {
    dir: string;
    directoryUrl: string;
    managementUrl: string;
    tlsCa: string;
    ocsp: PebbleResponder;
    child: Deno.ChildProcess;
    client: Deno.HttpClient;
    output: string[];
    collecting: Promise<unknown>;
  }) {
    this.dir = fields.dir;
    this.directoryUrl = fields.directoryUrl;
    this.managementUrl = fields.managementUrl;
    this.tlsCa = fields.tlsCa;
    this.ocsp = fields.ocsp;
    this.#child = fields.child;
    this.#client = fields.client;
    this.#output = fields.output;
    this.#collecting = fields.collecting;
  }

  /** What pebble printed so far, for a failing test's message. */
  get log(): string {
    return this.#output.join("");
  }

  /** A GET on the management interface, e.g. `/roots/0`; throws unless 200. */
  async management(urlPath: string): Promise<string> {
    const response = await fetch(new URL(urlPath, this.managementUrl), {
      client: this.#client,
      signal: AbortSignal.timeout(10_000),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`pebble ${urlPath}: HTTP ${response.status}: ${text}`);
    return text;
  }

  /**
   * Writes pebble's root (made at this start) to `<dir>/pebble-root.pem` and
   * returns its path: the trust anchor for `-CAfile`. Pebble's chain.pem does
   * not hold it.
   */
  async rootFile(): Promise<string> {
    const file = path.join(this.dir, "pebble-root.pem");
    await Deno.writeTextFile(file, await this.management("/roots/0"));
    return file;
  }

  /** Kills pebble, waits for it, and stops the responder. */
  async close(): Promise<void> {
    try {
      this.#child.kill("SIGTERM");
    } catch {
      // It has ended already.
    }
    await this.#child.status;
    await this.#collecting;
    await this.ocsp.close();
    this.#client.close();
  }
}

/** Makes a TLS CA and a certificate for 127.0.0.1 signed by it, for pebble to serve. */
async function makeTls(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  const file = (name: string) => path.join(dir, name);
  await Deno.writeTextFile(file("tls-ext.cnf"), TLS_EXTENSIONS);
  for (const name of ["tls-ca", "tls"]) {
    await openssl([
      "genpkey",
      "-algorithm",
      "EC",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-out",
      file(`${name}.key`),
    ]);
  }
  const common = ["-config", file("tls-ext.cnf"), "-days", "30"];
  await openssl([
    "req",
    "-new",
    "-x509",
    "-key",
    file("tls-ca.key"),
    "-subj",
    "/CN=ocspbot test pebble TLS CA",
    ...common,
    "-extensions",
    "ca",
    "-out",
    file("tls-ca.pem"),
  ]);
  await openssl([
    "req",
    "-new",
    "-key",
    file("tls.key"),
    "-subj",
    "/CN=127.0.0.1",
    ...common,
    "-extensions",
    "server",
    "-CA",
    file("tls-ca.pem"),
    "-CAkey",
    file("tls-ca.key"),
    "-out",
    file("tls.pem"),
  ]);
  return { ca: file("tls-ca.pem"), cert: file("tls.pem"), key: file("tls.key") };
}

/**
 * Starts pebble on free ports of 127.0.0.1 with its config written into `dir`
 * (which must exist and which the caller removes after `close()`), and our
 * responder, whose URL pebble puts in every certificate. Pebble validates no
 * challenge (`PEBBLE_VA_ALWAYS_VALID`), never sleeps before validating
 * (`PEBBLE_VA_NOSLEEP`) and rejects no good nonce (`PEBBLE_WFE_NONCEREJECT=0`;
 * its default, 5%, tests a client's retries, not ours). Resolves once both
 * its ACME and management interfaces answer.
 */
export async function startPebble(dir: string, options: PebbleOptions = {}): Promise<Pebble> {
  const tls = await makeTls(dir);
  const client = Deno.createHttpClient({ caCerts: [await Deno.readTextFile(tls.ca)] });
  let managementUrl = "";
  const ocsp = await PebbleResponder.start(
    dir,
    (urlPath) =>
      fetch(new URL(urlPath, managementUrl), {
        client,
        signal: AbortSignal.timeout(10_000),
      }),
  );
  try {
    // Free ports are free when asked, not when pebble binds them: try again if taken.
    for (let attempt = 1;; attempt++) {
      const [acme, management, http, tlsPort] = [freePort(), freePort(), freePort(), freePort()];
      managementUrl = `https://127.0.0.1:${management}/`;
      const config = path.join(dir, "pebble-config.json");
      await Deno.writeTextFile(
        config,
        JSON.stringify(
          {
            pebble: {
              listenAddress: `127.0.0.1:${acme}`,
              managementListenAddress: `127.0.0.1:${management}`,
              certificate: tls.cert,
              privateKey: tls.key,
              // Never dialled: PEBBLE_VA_ALWAYS_VALID skips validation.
              httpPort: http,
              tlsPort,
              ocspResponderURL: ocsp.url,
              externalAccountBindingRequired: false,
              ...(options.certificateValidity
                ? { certificateValidityPeriod: options.certificateValidity }
                : {}),
            },
          },
          null,
          2,
        ) + "\n",
      );
      const child = new Deno.Command("pebble", {
        args: ["-config", config, "-strict=false"],
        cwd: dir,
        clearEnv: true,
        env: {
          PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
          PEBBLE_VA_ALWAYS_VALID: "1",
          PEBBLE_VA_NOSLEEP: "1",
          PEBBLE_WFE_NONCEREJECT: "0",
          ...options.env,
        },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const output: string[] = [];
      const collecting = Promise.all([
        collect(child.stdout, output),
        collect(child.stderr, output),
      ]);
      const pebble = new Pebble({
        dir,
        directoryUrl: `https://127.0.0.1:${acme}/dir`,
        managementUrl,
        tlsCa: tls.ca,
        ocsp,
        child,
        client,
        output,
        collecting,
      });
      let ended = false;
      child.status.then(() => ended = true);
      const deadline = Date.now() + 15_000;
      while (!ended && Date.now() < deadline) {
        try {
          const directory = await fetch(pebble.directoryUrl, { client });
          await directory.body?.cancel();
          await pebble.management("/roots/0");
          if (directory.ok) return pebble;
        } catch {
          // Not listening yet.
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      if (!ended) child.kill("SIGTERM");
      await child.status;
      await collecting;
      const log = output.join("");
      if (attempt < 3 && /address already in use/.test(log)) continue;
      throw new Error(`pebble did not start:\n${log}`);
    }
  } catch (error) {
    await ocsp.close();
    client.close();
    throw error;
  }
}

// ------------------------------------------------------------- certbot --

/** What certbot did. */
export interface CertbotRun {
  code: number;
  /** stdout and stderr, as certbot wrote them. */
  output: string;
}

/** Options for {@link certbot}. */
export interface CertbotOptions {
  /** More environment for certbot and its hooks. */
  env?: Record<string, string>;
  /** Return a failed run instead of throwing. */
  allowFailure?: boolean;
  /** certbot's working directory, which its hooks inherit (default: `dir`). */
  cwd?: string;
}

/** Paths of a lineage certbot keeps under `<dir>/config/live/<name>`. */
export interface CertbotLive {
  /** The folder itself: `$RENEWED_LINEAGE` in a deploy hook. */
  lineage: string;
  cert: string;
  chain: string;
  fullchain: string;
  privkey: string;
}

/** Certbot's `--config-dir` under `dir`: renewal/, live/, renewal-hooks/deploy/. */
export function certbotConfigDir(dir: string): string {
  return path.join(dir, "config");
}

/** Where certbot keeps the lineage `name` when its folders are under `dir`. */
export function certbotLive(dir: string, name: string): CertbotLive {
  const lineage = path.join(certbotConfigDir(dir), "live", name);
  return {
    lineage,
    cert: path.join(lineage, "cert.pem"),
    chain: path.join(lineage, "chain.pem"),
    fullchain: path.join(lineage, "fullchain.pem"),
    privkey: path.join(lineage, "privkey.pem"),
  };
}

/**
 * Runs certbot with `args` against `pebble`, its config, work and logs
 * folders under `dir` (never /etc/letsencrypt), non-interactive, with pebble's
 * TLS CA as `REQUESTS_CA_BUNDLE` and an environment cleared of proxies and
 * the user's cli.ini (`XDG_CONFIG_HOME` is `dir`; Debian's
 * /etc/letsencrypt/cli.ini is read whatever we do, and only sets log
 * rotation). `--no-random-sleep-on-renew`: certbot renew without a terminal
 * otherwise sleeps up to 8 minutes first. Throws with certbot's output when
 * it fails, unless `allowFailure`.
 */
export async function certbot(
  pebble: Pebble,
  dir: string,
  args: string[],
  options: CertbotOptions = {},
): Promise<CertbotRun> {
  const child = new Deno.Command("certbot", {
    args: [
      ...args,
      "--config-dir",
      certbotConfigDir(dir),
      "--work-dir",
      path.join(dir, "work"),
      "--logs-dir",
      path.join(dir, "logs"),
      "--server",
      pebble.directoryUrl,
      "--non-interactive",
      "--agree-tos",
      "--register-unsafely-without-email",
      "--no-random-sleep-on-renew",
    ],
    cwd: options.cwd ?? dir,
    clearEnv: true,
    env: {
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      HOME: dir,
      XDG_CONFIG_HOME: dir,
      LANG: "C.UTF-8",
      REQUESTS_CA_BUNDLE: pebble.tlsCa,
      NO_PROXY: "*",
      // Under faketime (CI's year-ahead pass) certbot keeps the tests' clock.
      ...Object.fromEntries(
        Object.entries(Deno.env.toObject())
          .filter(([name]) => name === "LD_PRELOAD" || name.startsWith("FAKETIME")),
      ),
      ...options.env,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output: string[] = [];
  await Promise.all([collect(child.stdout, output), collect(child.stderr, output)]);
  const { code } = await child.status;
  const run = { code, output: output.join("") };
  if (code !== 0 && !options.allowFailure) {
    throw new Error(`certbot ${args.join(" ")} failed (${code}):\n${run.output}`);
  }
  return run;
}

/**
 * `certbot certonly` for `domains` (the first names the lineage) with the
 * manual plugin and a hook that does nothing: pebble, always valid, asks for
 * no proof, and no port is bound. `extra` goes after, e.g. `--key-type rsa`
 * or `--must-staple`.
 */
export async function certbotObtain(
  pebble: Pebble,
  dir: string,
  domains: string[],
  extra: string[] = [],
  options: CertbotOptions = {},
): Promise<CertbotRun & { live: CertbotLive }> {
  const run = await certbot(pebble, dir, [
    "certonly",
    "--manual",
    "--manual-auth-hook",
    "/bin/true",
    "--preferred-challenges",
    "http",
    "--cert-name",
    domains[0],
    ...domains.flatMap((domain) => ["-d", domain]),
    ...extra,
  ], options);
  return { ...run, live: certbotLive(dir, domains[0]) };
}

/**
 * `certbot renew --force-renewal`, of the lineage `certName` or of all:
 * certbot runs the executables in `<dir>/config/renewal-hooks/deploy/` (and
 * any `--deploy-hook` in `extra`) with `$RENEWED_LINEAGE` set.
 */
export function certbotRenew(
  pebble: Pebble,
  dir: string,
  certName?: string,
  extra: string[] = [],
  options: CertbotOptions = {},
): Promise<CertbotRun> {
  return certbot(pebble, dir, [
    "renew",
    "--force-renewal",
    ...(certName ? ["--cert-name", certName] : []),
    ...extra,
  ], options);
}
