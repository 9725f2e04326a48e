// Copyright 2026 the ocspbot authors. MIT license.

/**
 * Debian's Exim (exim4-daemon-light, built with GnuTLS) as a real SMTP
 * server on 127.0.0.1 that staples `tls_ocsp_file`, and a client that shows
 * what it staples after STARTTLS.
 *
 * How this Exim reads the file, as Exim 4.96's tls.c and tls-gnu.c say and
 * as experiments with it showed:
 *
 * - When tls_certificate, tls_privatekey and tls_ocsp_file have no `$`, the
 *   daemon loads them once (GnuTLS's
 *   `gnutls_certificate_set_ocsp_status_request_file2`: DER, the whole file
 *   in memory) and the children it forks per connection inherit that copy.
 *   A response without nextUpdate is stapled all the same.
 * - It also sets inotify watches on the folders of those files. The rename
 *   ocspbot makes fires one; the daemon reloads its TLS files 5 s later, but
 *   only when it next wakes, which is the next connection (it polls with no
 *   timeout). So a renewal needs no SIGHUP: connections in the first 4-5 s
 *   after the rename get the old response, the first one after that gets
 *   the new one, however long the daemon was idle.
 * - A missing, expired or unparsable file, or one about another
 *   certificate, fails the load, and every connection's child then fails
 *   the same way: STARTTLS, still advertised, is answered "454 TLS currently
 *   unavailable" and mainlog names the GnuTLS error. No TLS at all rather
 *   than TLS without a staple. A file put back after such a failure is not
 *   stapled until the daemon's own reload (TLS works, no staple, meanwhile).
 * - A loaded response that expires in memory stops being stapled (GnuTLS
 *   skips it), while TLS goes on; a reload of it then fails as above.
 * - SIGHUP makes the daemon close its sockets and re-exec itself with the
 *   same pid; the new one loads the file again at once.
 *
 * Exim takes `-C` from root without complaint (TRUSTED_CONFIG_LIST only
 * matters to other callers), so the tests run it as it is installed. Its
 * spool, logs and pid file are in the test's folder; `exim_user = root`
 * lets the daemon and its children use that folder, which `makeTempDir`
 * made for root alone (mode 700), where Debian-exim could not go.
 *
 * @module
 */

import * as path from "node:path";

/** Where the Debian package installs the daemon. */
export const EXIM = "/usr/sbin/exim4";

/** What `startExim` needs: the folder for its own files, and the TLS files. */
export interface EximOptions {
  /** A folder of the test's; Exim's config, spool, logs and pid file go in `<dir>/exim`. */
  dir: string;
  /** The leaf certificate, optionally followed by its intermediates (PEM). */
  cert: string;
  /** The leaf's private key (PEM). */
  key: string;
  /** The DER OCSP response to staple: Exim's `tls_ocsp_file`. */
  ocspFile: string;
  /** Where it listens on 127.0.0.1; default: a free port. */
  port?: number;
}

/** A running Exim daemon. */
export interface Exim {
  port: number;
  /** The daemon's pid; SIGHUP re-execs it under the same one. */
  pid: number;
  /** Exim's pid file (`-oP`), for an on_change that reads it. */
  pidFile: string;
  /** Exim's main log: startups, re-execs and TLS errors are written there. */
  mainlog: string;
  /** SIGHUP, then waits until the new daemon logs its start and listens. */
  reload(): Promise<void>;
  /** Stops the daemon and waits for it to end. */
  close(): Promise<void>;
}

const decoder = new TextDecoder();

/** A port nobody listens on, for a server to take. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

async function readOr(file: string, fallback = ""): Promise<string> {
  try {
    return await Deno.readTextFile(file);
  } catch {
    return fallback;
  }
}

async function listening(port: number): Promise<boolean> {
  try {
    (await Deno.connect({ hostname: "127.0.0.1", port })).close();
    return true;
  } catch {
    return false;
  }
}

/**
 * The smallest config that offers STARTTLS with a stapled response. The
 * three TLS paths must hold no `$`: an expansion turns the daemon's preload
 * and its watch off, and each connection would load the files itself.
 */
export function eximConfig(work: string, options: EximOptions): string {
  return `# Written by testdata/exim.ts for one test.
primary_hostname = a.test
# Root's own temp folder is closed to Debian-exim; run the children as root.
exim_user = root
exim_group = root
keep_environment =
spool_directory = ${work}/spool
log_file_path = ${work}/log/%slog
pid_file_path = ${work}/exim.pid
# No abstract notifier socket shared across the machine.
notifier_socket =
local_interfaces = <; 127.0.0.1
tls_advertise_hosts = *
tls_certificate = ${options.cert}
tls_privatekey = ${options.key}
tls_ocsp_file = ${options.ocspFile}
# No client certificates asked for: no CA bundle to load or watch.
tls_verify_certificates =
acl_smtp_rcpt = deny
`;
}

/**
 * Starts `exim4 -bdf` (a daemon that stays in the foreground, so that this
 * process owns it) on 127.0.0.1 and waits until it listens; throws with
 * Exim's stderr and logs when it does not.
 */
export async function startExim(options: EximOptions): Promise<Exim> {
  const work = path.join(options.dir, "exim");
  await Deno.mkdir(path.join(work, "spool"), { recursive: true });
  await Deno.mkdir(path.join(work, "log"), { recursive: true });
  const config = path.join(work, "exim.conf");
  // Exim refuses a config that anyone but root may write.
  await Deno.writeTextFile(config, eximConfig(work, options), { mode: 0o600 });
  const port = options.port ?? freePort();
  const pidFile = path.join(work, "exim.pid");
  const mainlog = path.join(work, "log", "mainlog");
  const logs = async () =>
    `${await readOr(mainlog)}${await readOr(path.join(work, "log", "paniclog"))}`;
  const child = new Deno.Command(EXIM, {
    // -oX overrides daemon_smtp_ports; without -oP it would write no pid file.
    args: ["-C", config, "-bdf", "-oX", String(port), "-oP", pidFile],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let ended = false;
  const status = child.status.then((status) => {
    ended = true;
    return status;
  });

  const stop = async () => {
    if (!ended) {
      try {
        child.kill("SIGTERM");
      } catch {
        // It ended between the check and the signal.
      }
    }
    await status;
    await stderr;
  };

  /** Polls `condition` until it holds, or fails with Exim's own words. */
  const waitUntil = async (what: string, condition: () => Promise<boolean>) => {
    const deadline = Date.now() + 10_000;
    while (!(await condition())) {
      if (ended || Date.now() > deadline) {
        const why = ended ? "exited" : "timed out";
        await stop();
        throw new Error(
          `exim4 ${why} before it ${what} on ${port}:\n` +
            `${await stderr}${await logs()}`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  const starts = async () => (await readOr(mainlog)).split("daemon started").length - 1;

  await waitUntil("listened", async () => (await starts()) > 0 && await listening(port));

  return {
    port,
    pid: child.pid,
    pidFile,
    mainlog,
    async reload() {
      // The old daemon may still accept until it sees the signal: wait for
      // the new one's "daemon started" line, written once it has bound again.
      const before = await starts();
      child.kill("SIGHUP");
      await waitUntil(
        "listened again after SIGHUP",
        async () => (await starts()) > before && await listening(port),
      );
    },
    close: stop,
  };
}

/** The text `s_client` prints of the stapled response, without its rules. */
const RESPONSE = /^OCSP response: ?(no response sent|\n={38}\n([\s\S]*?)={38}\n)/m;

/**
 * Connects with `openssl s_client -starttls smtp -status` and returns what
 * it printed of the staple, from "OCSP Response Data:" on, as `openssl ocsp
 * -respin … -resp_text` prints a stored one; undefined when Exim sent none.
 * Throws when no TLS session came about: Exim answers STARTTLS with 454 when
 * it cannot load its TLS files, the OCSP file included.
 */
export async function servedStaple(
  port: number,
  options: { servername?: string; caFile?: string } = {},
): Promise<string | undefined> {
  const { stdout, stderr } = await new Deno.Command("openssl", {
    args: [
      "s_client",
      "-connect",
      `127.0.0.1:${port}`,
      "-starttls",
      "smtp",
      "-status",
      "-servername",
      options.servername ?? "a.test",
      ...(options.caFile ? ["-CAfile", options.caFile] : []),
    ],
    // With stdin closed, s_client ends once the handshake is done.
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const printed = decoder.decode(stdout);
  const match = RESPONSE.exec(printed);
  if (!match) {
    throw new Error(
      `no TLS session with Exim on ${port}:\n${printed}${decoder.decode(stderr)}`,
    );
  }
  return match[2];
}
