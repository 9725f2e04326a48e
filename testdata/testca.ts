// Copyright 2026 the ocspbot authors. MIT license.

/**
 * A throwaway certificate authority and a real OCSP responder on 127.0.0.1,
 * shared by the tests, the demo and the benchmark.
 *
 * The CA has a root, an intermediate, a delegated OCSP signer (OCSPSigning
 * EKU, issued by the intermediate) and leaves whose AIA points at the
 * responder. Answers are made by OpenSSL's own responder logic
 * (`openssl ocsp -index … -reqin - -respout -`), one process per request,
 * behind a listener of our own: `openssl ocsp -port` binds every interface.
 * The responder can misbehave on demand to test the bot's error paths.
 *
 * @module
 */

import { createPrivateKey, sign } from "node:crypto";
import * as path from "node:path";
import { main, Output } from "../ocspbot.ts";

/** How the responder answers the next requests. */
export type ResponderMode =
  | "good" // OpenSSL's answer from the index, signed by the delegated signer
  | "hang" // never answers until the CA is closed
  | "http500" // HTTP 500 with a text body
  | "garbage" // HTTP 200 with bytes that are not an OCSP response
  | "wrong-signer" // a real answer signed by a key the CA never authorised
  | { signer: KeyPair } // a real answer signed by this certificate and key
  | { redirect: string } // HTTP 301 to this URL, answered as "good" when it is asked
  | { fixed: Uint8Array<ArrayBuffer> }; // these bytes, whatever was asked

/**
 * One answer of a forged response (TestCa.forge()): about the certificate
 * asked for, or (`other`) about another serial, with the times given.
 */
export interface ForgedAnswer {
  status: "good" | "revoked" | "unknown";
  thisUpdate: Date;
  nextUpdate?: Date;
  revocationTime?: Date;
  other?: boolean;
}

/** DER: a tag, its length, its content. */
function der(tag: number, ...content: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const length = content.reduce((sum, part) => sum + part.length, 0);
  const octets: number[] = [];
  for (let rest = length; rest > 0; rest = Math.floor(rest / 256)) octets.unshift(rest % 256);
  const header = length < 128 ? [tag, length] : [tag, 0x80 | octets.length, ...octets];
  const bytes = new Uint8Array(header.length + length);
  bytes.set(header);
  let at = header.length;
  for (const part of content) {
    bytes.set(part, at);
    at += part.length;
  }
  return bytes;
}

/** The elements inside a DER element (at `start` of `bytes`), each as its whole bytes. */
function derChildren(bytes: Uint8Array, start = 0): Uint8Array[] {
  const lengthOf = (at: number) => {
    const first = bytes[at + 1];
    if (first < 128) return { header: 2, length: first };
    const count = first & 0x7f;
    let length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + bytes[at + 2 + i];
    return { header: 2 + count, length };
  };
  const outer = lengthOf(start);
  const children: Uint8Array[] = [];
  for (let at = start + outer.header; at < start + outer.header + outer.length;) {
    const { header, length } = lengthOf(at);
    children.push(bytes.subarray(at, at + header + length));
    at += header + length;
  }
  return children;
}

/** A GeneralizedTime, whole seconds. */
function generalizedTime(time: Date): Uint8Array<ArrayBuffer> {
  const text = time.toISOString().replace(/[-:T]/g, "").slice(0, 14) + "Z";
  return der(0x18, new TextEncoder().encode(text));
}

/** A certificate and its key, as files. */
export interface KeyPair {
  cert: string;
  key: string;
}

/**
 * The keys and signatures of the CA's own certificates (root, upper,
 * intermediate): ECDSA P-256 by default; P-384; Ed25519; RSA keys signing
 * with RSASSA-PSS (AD CS's AlternateSignatureAlgorithm=1); RSASSA-PSS keys.
 */
export type CaKeys = "p256" | "p384" | "ed25519" | "rsa-pss-signatures" | "rsa-pss-keys";

const KEY_OPTIONS: Record<CaKeys, string[]> = {
  "p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
  "p384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
  "ed25519": ["-algorithm", "ED25519"],
  "rsa-pss-signatures": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
  "rsa-pss-keys": ["-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048"],
};

/** Options for one leaf certificate. */
export interface LeafOptions {
  /** OCSP URLs in the AIA; default: the responder. `[]` leaves AIA out. */
  ocspUrls?: string[];
  /** What the responder says about it; "unknown" keeps it out of the index. */
  status?: "good" | "revoked" | "unknown";
  days?: number;
  mustStaple?: boolean;
  /** As openssl's -set_serial takes it, e.g. "-0x1234"; default: the CA's next serial. */
  serial?: string;
}

/** Paths of the files scan_keys finds with its default masks. */
export interface LeafFiles {
  cert: string;
  chain: string;
  rootchain: string;
  serial: string;
}

const EXTENSIONS = `
[ req ]
distinguished_name = dn
[ dn ]
[ root ]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ upper ]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ intermediate ]
basicConstraints = critical,CA:true,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ signer ]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature
extendedKeyUsage = OCSPSigning
[ leaf ]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
`;

/** The script under test, and the permissions the README tells users to grant. */
export const BOT = path.join(import.meta.dirname!, "..", "ocspbot.ts");
export const BOT_PERMISSIONS = ["--allow-read", "--allow-write", "--allow-run", "--allow-env"];

export interface BotRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Spawns the bot from `cwd` as a user would. */
export function runBot(
  cwd: string,
  args: string[] = [],
  env: Record<string, string> = {},
  permissions = BOT_PERMISSIONS,
): Promise<BotRun> {
  return spawned(Deno.execPath(), ["run", "--quiet", ...permissions, BOT, ...args], cwd, env);
}

/** Runs `program` to its end from `cwd`, colours off, and returns what it printed. */
async function spawned(
  program: string,
  args: string[],
  cwd: string,
  env: Record<string, string>,
): Promise<BotRun> {
  const output = await new Deno.Command(program, {
    args,
    cwd,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/**
 * Runs the bot's main() in this process, from `cwd`, with `env` added to
 * the environment and `clock` as the real clock (file stamps), and returns
 * what it printed as runBot() does: a run as fast as a function call, for
 * what needs no process of its own (not permissions, signals, time zones or
 * the status Deno exits with). The process's own environment is not changed.
 */
export async function runMain(
  cwd: string,
  args: string[] = [],
  env: Record<string, string> = {},
  clock: () => number = Date.now,
): Promise<BotRun> {
  const printed = { stdout: "", stderr: "" };
  const decoder = new TextDecoder();
  const capture = (stream: keyof typeof printed) => ({
    writeSync(bytes: Uint8Array) {
      printed[stream] += decoder.decode(bytes);
      return bytes.length;
    },
  });
  const output = new Output({ stdout: capture("stdout"), stderr: capture("stderr") });
  const world = { clock, env: { ...Deno.env.toObject(), ...env }, cwd };
  const code = await main(args, output, world);
  return { code, ...printed };
}

/** A real clock `ms` ahead, for runMain(): files written just now count as settled. */
export function realClockAhead(ms: number): () => number {
  return () => Date.now() + ms;
}

/**
 * Spawns the bot through bash with `redirection` after its command, as cron
 * or a shell script does (`> /dev/full`, `| true`, `>> log 2>&1`); `code` is
 * the bot's own status, not the pipe's.
 */
export function runBotRedirected(
  cwd: string,
  args: string[],
  redirection: string,
  env: Record<string, string> = {},
): Promise<BotRun> {
  const command = [Deno.execPath(), "run", "--quiet", ...BOT_PERMISSIONS, BOT, ...args];
  return spawned(
    "bash",
    ["-c", `"$@" ${redirection}; exit \${PIPESTATUS[0]}`, "bash", ...command],
    cwd,
    env,
  );
}

/** Runs openssl to completion and returns stdout; throws with stderr. */
export async function openssl(
  args: string[],
  stdin?: Uint8Array,
  clockOffsetMs?: number,
): Promise<Uint8Array<ArrayBuffer>> {
  // faketime's "@…" starts the clock there, relative to this process's own
  // clock, which CI itself moves a year ahead.
  const start = clockOffsetMs === undefined
    ? undefined
    : new Date(Date.now() + clockOffsetMs).toISOString().slice(0, 19).replace("T", " ");
  const child = new Deno.Command(start ? "faketime" : "openssl", {
    args: start ? ["-f", `@${start}`, "openssl", ...args] : args,
    env: start ? { TZ: "UTC" } : undefined,
    stdin: stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin) {
    const writer = child.stdin.getWriter();
    await writer.write(stdin);
    await writer.close();
  }
  const { code, stdout, stderr } = await child.output();
  if (code !== 0) {
    throw new Error(
      `openssl ${args.join(" ")} failed (${code}): ${new TextDecoder().decode(stderr)}`,
    );
  }
  return stdout;
}

function indexDate(date: Date): string {
  return date.toISOString().replace(/[-:T]/g, "").slice(2, 14) + "Z";
}

/** A CA in a temp dir with its responder listening; `close()` ends both. */
export class TestCa {
  readonly dir: string;
  readonly url: string;
  /** Intermediate only: what `chain` means in the bot's config. */
  readonly chain: string;
  /** Intermediate and root: what `rootchain` means. */
  readonly rootchain: string;
  mode: ResponderMode = "good";
  /** Minutes between thisUpdate and nextUpdate; 0 leaves nextUpdate out. */
  validityMinutes = 24 * 60;
  /**
   * Answer a repeated request with the answer signed the first time, as the
   * CDNs in front of real responders do; the bench uses it so that it
   * measures the bot, not this responder.
   */
  cacheAnswers = false;
  /**
   * The responder's clock ahead of (or, negative, behind) the tests', with
   * faketime: a responder whose clock runs ahead, or a cache serving answers
   * signed long ago.
   */
  clockOffsetMs?: number;
  /** Milliseconds to wait before each answer, as a responder far away would. */
  latencyMs = 0;
  #answers = new Map<string, Uint8Array<ArrayBuffer>>();
  /** Answer the next this many requests with HTTP 500, then as `mode` says. */
  failNextRequests = 0;
  /**
   * URLs of requests that came through this listener as an HTTP proxy (in
   * absolute form, for another host); they are answered all the same.
   */
  readonly proxied: string[] = [];
  /** Host headers of the requests served, in order. */
  readonly hostHeaders: (string | null)[] = [];
  #server: Deno.HttpServer;
  #serial = 0x1000;
  #index = new Map<string, string>();
  #releaseHangs = Promise.withResolvers<void>();

  /** With an upper intermediate: root, upper, intermediate, leaves. */
  readonly #upper: boolean;
  /** Part of every subject name: two CAs of one test must not share names. */
  readonly #label: string;
  readonly #keys: CaKeys;

  private constructor(
    dir: string,
    server: Deno.HttpServer,
    port: number,
    options: { upper?: boolean; label?: string; keys?: CaKeys },
  ) {
    this.dir = dir;
    this.#server = server;
    this.url = `http://127.0.0.1:${port}/`;
    const upper = options.upper ?? false;
    this.#upper = upper;
    this.#label = options.label ? ` ${options.label}` : "";
    this.#keys = options.keys ?? "p256";
    this.chain = path.join(dir, upper ? "chain.pem" : "intermediate.pem");
    this.rootchain = path.join(dir, "rootchain.pem");
  }

  /**
   * Makes the CA keys and certificates and starts the responder. `upper`
   * puts a second intermediate between the root and the one that issues
   * leaves; `chain` then holds both, the issuing one first. `label` goes into
   * every subject name, so that a second CA's names differ from the first's;
   * `keys` chooses the CA's own keys and signatures.
   */
  /**
   * The files of a CA made once per process, which withCa() copies: making
   * its keys and certificates costs ~150 ms of openssl, and a suite makes a
   * hundred CAs. A test that needs a CA of its own calls create().
   */
  static #template?: Promise<{ dir: string; serial: number }>;

  static async #makeTemplate(): Promise<{ dir: string; serial: number }> {
    const ca = await TestCa.create();
    const dir = await Deno.makeTempDir({ prefix: "ocspbot-ca-template-" });
    globalThis.addEventListener("unload", () => {
      try {
        Deno.removeSync(dir, { recursive: true });
      } catch {
        // Gone already.
      }
    });
    for (const entry of Deno.readDirSync(ca.dir)) {
      if (entry.isFile) await Deno.copyFile(ca.#file(entry.name), path.join(dir, entry.name));
    }
    const serial = ca.#serial;
    await ca.close();
    return { dir, serial };
  }

  /** A CA with the template's keys and certificates, and a responder of its own. */
  static async copied(): Promise<TestCa> {
    const template = await (TestCa.#template ??= TestCa.#makeTemplate());
    return await TestCa.create({}, template);
  }

  static async create(
    options: { upper?: boolean; label?: string; keys?: CaKeys } = {},
    template?: { dir: string; serial: number },
  ): Promise<TestCa> {
    const dir = await Deno.makeTempDir({ prefix: "ocspbot-ca-" });
    const listening = Promise.withResolvers<number>();
    const server: Deno.HttpServer = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      onListen: ({ port }) => listening.resolve(port),
    }, (request): Promise<Response> => ca.#answer(request));
    const ca: TestCa = new TestCa(dir, server, await listening.promise, options);
    try {
      if (template) {
        for (const entry of Deno.readDirSync(template.dir)) {
          await Deno.copyFile(path.join(template.dir, entry.name), ca.#file(entry.name));
        }
        ca.#serial = template.serial;
      } else await ca.#makeAuthority();
    } catch (error) {
      await ca.close();
      throw error;
    }
    return ca;
  }

  #file(name: string): string {
    return path.join(this.dir, name);
  }

  /** The certificate and key of one of the CA's own: "root", "intermediate", "signer", "rogue". */
  keyPair(name: string): KeyPair {
    return { cert: this.#file(`${name}.pem`), key: this.#file(`${name}.key`) };
  }

  /**
   * A delegated responder certificate (OCSPSigning, issued by the
   * intermediate) valid for `days`, for a responder whose certificate ends
   * before the responses it signs do.
   */
  async issueSigner(name: string, days: number): Promise<KeyPair> {
    await this.#certify({
      name,
      subject: `/CN=ocspbot test${this.#label} ${name}`,
      extensions: "signer",
      issuer: "intermediate",
      key: "signer",
      days,
    });
    return { cert: this.#file(`${name}.pem`), key: this.#file("signer.key") };
  }

  async #makeAuthority(): Promise<void> {
    await Deno.writeTextFile(this.#file("ext.cnf"), EXTENSIONS);
    await Promise.all(
      ["root", ...(this.#upper ? ["upper"] : []), "intermediate", "signer", "leaf", "rogue"].map((
        name,
      ) =>
        openssl([
          "genpkey",
          ...KEY_OPTIONS[TestCa.#AUTHORITIES.includes(name) ? this.#keys : "p256"],
          "-out",
          this.#file(`${name}.key`),
        ])
      ),
    );
    await this.#certify({ name: "root", subject: `/CN=ocspbot test${this.#label} root` });
    if (this.#upper) {
      await this.#certify({
        name: "upper",
        subject: `/CN=ocspbot test${this.#label} upper`,
        issuer: "root",
      });
    }
    await this.#certify({
      name: "intermediate",
      subject: `/CN=ocspbot test${this.#label} intermediate`,
      issuer: this.#upper ? "upper" : "root",
    });
    await Promise.all([
      this.#certify({
        name: "signer",
        subject: `/CN=ocspbot test${this.#label} OCSP signer`,
        extensions: "signer",
        issuer: "intermediate",
      }),
      this.#certify({
        name: "rogue",
        subject: `/CN=ocspbot${this.#label} rogue OCSP signer`,
        extensions: "signer",
      }),
    ]);
    const root = await Deno.readTextFile(this.#file("root.pem"));
    let intermediates = await Deno.readTextFile(this.#file("intermediate.pem"));
    if (this.#upper) {
      intermediates += await Deno.readTextFile(this.#file("upper.pem"));
      await Deno.writeTextFile(this.chain, intermediates);
    }
    await Deno.writeTextFile(this.rootchain, intermediates + root);
    this.#writeIndex();
  }

  /** Signs `<name>.key` into `out` (default `<name>.pem`); no issuer: self-signed. */
  /** The certificates whose keys `keys` chooses; leaves and responders keep P-256. */
  static readonly #AUTHORITIES = ["root", "upper", "intermediate"];

  async #certify(options: {
    name: string;
    subject: string;
    extensions?: string;
    issuer?: string;
    key?: string;
    out?: string;
    days?: number;
    extra?: string[];
    serial?: string;
  }): Promise<string> {
    const serial = options.serial ??
      `0x${(this.#serial++).toString(16).toUpperCase().padStart(4, "0")}`;
    // The signer is the issuer, or the certificate itself when self-signed.
    const signer = options.issuer ?? options.name;
    const pss = this.#keys === "rsa-pss-signatures" && TestCa.#AUTHORITIES.includes(signer)
      ? ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:-1"]
      : [];
    const signing = options.issuer
      ? [
        "-CA",
        this.#file(`${options.issuer}.pem`),
        "-CAkey",
        this.#file(`${options.issuer}.key`),
      ]
      : ["-x509"];
    await openssl([
      "req",
      "-new",
      "-key",
      this.#file(`${options.key ?? options.name}.key`),
      "-subj",
      options.subject,
      "-config",
      this.#file("ext.cnf"),
      "-extensions",
      options.extensions ?? options.name,
      "-days",
      String(options.days ?? 365),
      "-set_serial",
      serial,
      ...signing,
      ...pss,
      ...(options.extra ?? []),
      "-out",
      options.out ?? this.#file(`${options.name}.pem`),
    ]);
    // As the index and `openssl x509 -serial` name it: hex, upper case, a sign if negative.
    const [, sign, hex] = /^(-?)0x(.*)$/.exec(serial)!;
    return sign + hex.toUpperCase().padStart(hex.length % 2 ? hex.length + 1 : hex.length, "0");
  }

  /**
   * Issues a leaf for `name` into `folder` as `<name>.pem`,
   * `<name>-chain.pem` and `<name>-rootchain.pem`.
   */
  async issueLeaf(
    folder: string,
    name: string,
    options: LeafOptions = {},
  ): Promise<LeafFiles> {
    await Deno.mkdir(folder, { recursive: true });
    const cert = path.join(folder, `${name}.pem`);
    const urls = options.ocspUrls ?? [this.url];
    const extra: string[] = [];
    if (urls.length > 0) {
      extra.push(
        "-addext",
        "authorityInfoAccess=" + urls.map((url) => `OCSP;URI:${url}`).join(","),
      );
    }
    if (options.mustStaple) extra.push("-addext", "tlsfeature=status_request");
    const serial = await this.#certify({
      name,
      subject: `/CN=${name}`,
      extensions: "leaf",
      issuer: "intermediate",
      key: "leaf",
      out: cert,
      days: options.days ?? 30,
      extra,
      serial: options.serial,
    });
    const files: LeafFiles = {
      cert,
      chain: path.join(folder, `${name}-chain.pem`),
      rootchain: path.join(folder, `${name}-rootchain.pem`),
      serial,
    };
    await Deno.copyFile(this.chain, files.chain);
    await Deno.copyFile(this.rootchain, files.rootchain);
    this.setStatus(serial, options.status ?? "good", name);
    return files;
  }

  /**
   * Writes an executable that logs each openssl call's subcommand to
   * `<path>.log` and runs the real openssl: give it as openssl_executable.
   */
  static async writeCountingOpenssl(file: string): Promise<() => Promise<string[]>> {
    await Deno.writeTextFile(file, `#!/bin/sh\necho "$1" >> '${file}.log'\nexec openssl "$@"\n`);
    await Deno.chmod(file, 0o755);
    return async () => {
      try {
        return (await Deno.readTextFile(`${file}.log`)).split("\n").filter(Boolean);
      } catch {
        return [];
      }
    };
  }

  /** Changes what the responder says about a serial from now on. */
  setStatus(
    serial: string,
    status: "good" | "revoked" | "unknown",
    name = serial,
  ): void {
    const expiry = indexDate(new Date(Date.now() + 400 * 86400_000));
    if (status === "unknown") this.#index.delete(serial);
    else {
      const revoked = status === "revoked"
        ? indexDate(new Date(Date.now() - 3600_000)) + ",keyCompromise"
        : "";
      this.#index.set(
        serial,
        [status === "good" ? "V" : "R", expiry, revoked, serial, "unknown"]
          // The index is tab- and line-separated; only the serial is looked up.
          .join("\t") + `\t/CN=${name.replace(/\s/g, "_")}`,
      );
    }
    this.#writeIndex();
  }

  #writeIndex(): void {
    const lines = [...this.#index.values()].map((line) => line + "\n");
    Deno.writeTextFileSync(this.#file("index.txt"), lines.join(""));
    // A name issued twice (a renewed certificate) is two valid entries of one subject.
    Deno.writeTextFileSync(this.#file("index.txt.attr"), "unique_subject = no\n");
  }

  /**
   * What a stored response says of `cert`, once openssl has verified it
   * against this CA as ocspbot does; throws when it does not verify.
   */
  async verifiedStatus(file: string, cert: string): Promise<string> {
    const printed = new TextDecoder().decode(
      await openssl([
        "ocsp",
        "-respin",
        file,
        "-issuer",
        this.chain,
        "-cert",
        cert,
        "-CAfile",
        this.rootchain,
        "-VAfile",
        this.rootchain,
        "-no_nonce",
      ]),
    );
    const status = /: (good|revoked|unknown)$/m.exec(printed)?.[1];
    if (!status) throw new Error(`${file} says nothing of ${cert}`);
    return status;
  }

  /** A response for `cert` as the responder makes it now, or as a rogue would. */
  async respond(
    cert: string,
    signer: "signer" | "rogue" | "root" = "signer",
  ): Promise<Uint8Array<ArrayBuffer>> {
    const request = await openssl([
      "ocsp",
      "-no_nonce",
      "-issuer",
      this.chain,
      "-cert",
      cert,
      "-reqout",
      "-",
    ]);
    return await this.#sign(request, this.keyPair(signer));
  }

  /**
   * A response for `cert` as a lying or odd responder sends it: openssl's
   * own answer taken apart, its answers replaced by `answers` (times and
   * statuses as given; `other` ones about another serial), `extraCerts`
   * added to the certificates it carries, and signed again by `signer`
   * (the delegated signer unless given), so that it verifies. `ber`: the
   * BasicOCSPResponse in BER's indefinite length, which openssl accepts
   * and keeps as it is.
   */
  async forge(
    cert: string,
    answers: ForgedAnswer[],
    options: { signer?: KeyPair; extraCerts?: Uint8Array[]; ber?: boolean } = {},
  ): Promise<Uint8Array<ArrayBuffer>> {
    const signer = options.signer ?? this.keyPair("signer");
    const request = await openssl(
      ["ocsp", "-no_nonce", "-issuer", this.chain, "-cert", cert, "-reqout", "-"],
    );
    const real = await this.#sign(request, signer);
    const [, responseBytes] = derChildren(real);
    const [typeAndResponse] = derChildren(responseBytes);
    const [type, octets] = derChildren(typeAndResponse);
    const [basic] = derChildren(octets);
    const [tbs, algorithm, , certs] = derChildren(basic);
    const fields = derChildren(tbs);
    const singlesAt = fields.findIndex((field, i) => i > 0 && field[0] === 0x30);
    const [ours] = derChildren(fields[singlesAt]);
    const certId = derChildren(ours)[0];
    const [hash, nameHash, keyHash] = derChildren(certId);
    const otherSerial = der(0x02, new Uint8Array([0x7f, 0x01, 0x02, 0x03]));
    const singles = answers.map((answer) => {
      const id = answer.other ? der(0x30, hash, nameHash, keyHash, otherSerial) : certId;
      const status = answer.status === "good"
        ? new Uint8Array([0x80, 0x00])
        : answer.status === "revoked"
        ? der(0xa1, generalizedTime(answer.revocationTime ?? answer.thisUpdate))
        : new Uint8Array([0x82, 0x00]);
      const next = answer.nextUpdate ? [der(0xa0, generalizedTime(answer.nextUpdate))] : [];
      return der(0x30, id, status, generalizedTime(answer.thisUpdate), ...next);
    });
    const newTbs = der(
      0x30,
      ...fields.map((field, i) => i === singlesAt ? der(0x30, ...singles) : field),
    );
    const key = createPrivateKey(await Deno.readTextFile(signer.key));
    const signature = sign(key.asymmetricKeyType === "ed25519" ? null : "sha256", newTbs, key);
    const carried = certs ? derChildren(derChildren(certs)[0]) : [];
    const newCerts = der(0xa0, der(0x30, ...carried, ...(options.extraCerts ?? [])));
    const bit = der(0x03, new Uint8Array([0]), signature);
    const newBasic = options.ber
      ? new Uint8Array([0x30, 0x80, ...newTbs, ...algorithm, ...bit, ...newCerts, 0, 0])
      : der(0x30, newTbs, algorithm, bit, newCerts);
    return der(
      0x30,
      der(0x0a, new Uint8Array([0])),
      der(0xa0, der(0x30, type, der(0x04, newBasic))),
    );
  }

  #sign(request: Uint8Array, signer: KeyPair): Promise<Uint8Array<ArrayBuffer>> {
    return openssl(
      [
        "ocsp",
        "-index",
        this.#file("index.txt"),
        "-CA",
        this.chain,
        "-rsigner",
        signer.cert,
        "-rkey",
        signer.key,
        ...(this.validityMinutes > 0 ? ["-nmin", String(this.validityMinutes)] : []),
        "-reqin",
        "-",
        "-respout",
        "-",
      ],
      request,
      this.clockOffsetMs,
    );
  }

  async #answer(request: Request): Promise<Response> {
    this.hostHeaders.push(request.headers.get("host"));
    if (new URL(request.url).host !== new URL(this.url).host) this.proxied.push(request.url);
    const body = new Uint8Array(await request.arrayBuffer());
    const ocsp = { "content-type": "application/ocsp-response" };
    const mode = this.mode;
    if (this.latencyMs > 0) await new Promise((resolve) => setTimeout(resolve, this.latencyMs));
    if (mode === "hang") {
      await this.#releaseHangs.promise;
      return new Response("closing", { status: 503 });
    }
    if (this.failNextRequests > 0) {
      this.failNextRequests--;
      return new Response("try again", { status: 500 });
    }
    if (mode === "http500") return new Response("broken", { status: 500 });
    if (mode === "garbage") {
      return new Response("this is not DER at all", { headers: ocsp });
    }
    if (typeof mode === "object" && "redirect" in mode) {
      const target = new URL(mode.redirect);
      if (new URL(request.url).pathname !== target.pathname) {
        return new Response("moved", { status: 301, headers: { location: mode.redirect } });
      }
    }
    if (typeof mode === "object" && "fixed" in mode) {
      return new Response(mode.fixed, { headers: ocsp });
    }
    const signer = typeof mode === "object" && "signer" in mode
      ? mode.signer
      : this.keyPair(mode === "wrong-signer" ? "rogue" : "signer");
    const key = signer.cert + ":" + body.toBase64();
    const answer = (this.cacheAnswers && this.#answers.get(key)) || await this.#sign(body, signer);
    if (this.cacheAnswers) this.#answers.set(key, answer);
    return new Response(answer, { headers: ocsp });
  }

  /** Stops the responder and removes every file of the CA. */
  async close(): Promise<void> {
    this.#releaseHangs.resolve();
    await this.#server.shutdown();
    await Deno.remove(this.dir, { recursive: true });
  }
}

// ------------------------------------------------- sites for the tests --

/** A CA with its responder for the length of `fn`. */
export async function withCa(fn: (ca: TestCa) => Promise<void>): Promise<void> {
  const ca = await TestCa.copied();
  try {
    await fn(ca);
  } finally {
    await ca.close();
  }
}

/** A temp folder for the length of `fn`, removed however `fn` ends. */
export async function withTempDir(prefix: string, fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Writes `text` to `file`, making its folders. */
export async function writeWithFolders(file: string, text: string): Promise<void> {
  await Deno.mkdir(path.dirname(file), { recursive: true });
  await Deno.writeTextFile(file, text);
}

export const BASE_CONFIG = `
minimum_validity: 6h
ocsp_folder: responses
scan_keys:
  - folder: certs
`;

/**
 * A site folder with leaves in `certs/` and an `ocspbot.yaml` that scans
 * them into `responses/`; responses are valid for 24 h, due 6 h before end.
 */
export async function makeSite(
  ca: TestCa,
  names: string[],
  config = BASE_CONFIG,
): Promise<string> {
  const site = path.join(ca.dir, "site");
  await Deno.mkdir(site, { recursive: true });
  await Promise.all(names.map((name) => ca.issueLeaf(path.join(site, "certs"), name)));
  await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), config);
  return site;
}

/** Where BASE_CONFIG stores the response of the leaf `name`. */
export function response(site: string, name: string): string {
  return path.join(site, "responses", `${name}.ocsp-resp`);
}

/** Whether anything, even a dangling link, is at `file`. */
export async function exists(file: string): Promise<boolean> {
  try {
    await Deno.lstat(file);
    return true;
  } catch {
    return false;
  }
}
