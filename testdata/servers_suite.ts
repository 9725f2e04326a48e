// Copyright 2026 the ocspbot authors. MIT license.

/**
 * Real servers staple what ocspbot writes: nginx (ssl_stapling_file),
 * HAProxy (`<crt>.ocsp`, and `set ssl ocsp-response` on its runtime API) and
 * lighttpd (ssl.stapling-file),
 * started on 127.0.0.1 from Debian's packages, checked with a real TLS
 * client, `openssl s_client -status`; Exim over STARTTLS; certbot renews
 * against pebble and calls the README's deploy hook; GnuTLS's ocsptool, a
 * second OCSP implementation, agrees on whose signature a staple may carry;
 * and Prometheus' own promtool accepts the metrics file. Needs `nginx`,
 * `haproxy`, `lighttpd` (with mod_openssl), `exim4`, `certbot`, `pebble`,
 * `ocsptool`, `faketime` and `promtool` on PATH (`apt-get install nginx
 * haproxy lighttpd lighttpd-mod-openssl exim4-daemon-light certbot pebble
 * gnutls-bin faketime prometheus`); run with `deno task test:servers`.
 *
 * @module
 */

import * as path from "node:path";
import { assert, assertEquals, assertMatch, assertNotEquals } from "./asserts.ts";
import {
  BASE_CONFIG,
  BOT,
  BOT_PERMISSIONS,
  type BotRun,
  exists,
  type KeyPair,
  makeSite,
  response,
  runBot,
  TestCa,
  withCa,
  withTempDir,
  writeWithFolders,
} from "./testca.ts";
import { installBot, readmeBlocks, readmeHook, readmeRecipe } from "./readme.ts";
import { certbotConfigDir, certbotObtain, certbotRenew, startPebble } from "./acme.ts";
import { DEFAULT_STATE_FILE } from "../ocspbot.ts";
import { servedStaple, startExim } from "./exim.ts";

/** HAProxy's runtime API is a Unix socket, which Deno counts as network. */
const HAPROXY_PERMISSIONS = [...BOT_PERMISSIONS, "--allow-net"];

const decoder = new TextDecoder();
const RULE = "======================================\n";

/** A port nobody listens on, for a server to take. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/**
 * Writes an HAProxy config serving `crt` (a bundle, or a folder ending in
 * "/") on 127.0.0.1:`port`, with `global` lines if any; returns its path.
 */
async function writeHaproxyConfig(
  file: string,
  port: number,
  crt: string,
  global: string[] = [],
): Promise<string> {
  await Deno.writeTextFile(
    file,
    `${global.length > 0 ? `global\n${global.map((line) => `  ${line}\n`).join("")}` : ""}defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
frontend tls
  bind 127.0.0.1:${port} ssl crt ${crt}
  http-request return status 200 content-type text/plain string ok
`,
  );
  return file;
}

/** `haproxy -c`: whether HAProxy would load the config, and what it says. */
async function haproxyCheck(config: string): Promise<{ code: number; output: string }> {
  const { code, stdout, stderr } = await new Deno.Command("haproxy", {
    args: ["-c", "-f", config],
    stdin: "null",
  }).output();
  return { code, output: decoder.decode(stdout) + decoder.decode(stderr) };
}

/** openssl's text dump of a stored response: every byte shows in it. */
async function responseText(file: string): Promise<string> {
  const { stdout } = await new Deno.Command("openssl", {
    args: ["ocsp", "-respin", file, "-resp_text", "-noverify"],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).output();
  return decoder.decode(stdout);
}

/** What `s_client -status` received stapled, as the same text dump. */
async function stapled(port: number, ca: TestCa): Promise<string> {
  const { stdout } = await new Deno.Command("openssl", {
    args: [
      "s_client",
      "-connect",
      `127.0.0.1:${port}`,
      "-servername",
      "a.test",
      "-status",
      "-CAfile",
      ca.rootchain,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).output();
  return decoder.decode(stdout).split(RULE)[1] ?? "";
}

/** Polls until `condition` holds or `seconds` pass; returns the last value. */
async function waitFor<T>(
  seconds: number,
  get: () => Promise<T>,
  condition: (value: T) => boolean,
) {
  const deadline = Date.now() + seconds * 1000;
  let value = await get();
  while (!condition(value) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    value = await get();
  }
  return value;
}

/** A server process for the length of `fn`, always stopped afterwards. */
async function withServer(
  program: string,
  args: string[],
  port: number,
  fn: () => Promise<void>,
): Promise<void> {
  const server = new Deno.Command(program, {
    args,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  try {
    const listening = await waitFor(10, async () => {
      try {
        (await Deno.connect({ hostname: "127.0.0.1", port })).close();
        return true;
      } catch {
        return false;
      }
    }, (up) => up);
    if (!listening) throw new Error(`${program} did not start listening on ${port}`);
    await fn();
  } finally {
    server.kill("SIGTERM");
    await server.status;
    const log = decoder.decode(await new Response(server.stderr).arrayBuffer());
    if (log.includes("[ALERT]") || log.includes("[emerg]")) console.error(log);
  }
}

/** Waits past a second, so the next response has a later thisUpdate. */
function nextSecond(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 1100));
}

const thisUpdate = (text: string) => /This Update: (.*)/.exec(text)?.[1];

/**
 * A leaf for `name` in `folder` as HAProxy's `crt` wants it: certificate,
 * intermediate and key in one file, whose `.ocsp` a scan_keys mask writes.
 */
async function issueBundle(ca: TestCa, folder: string, name: string) {
  const leaf = await ca.issueLeaf(folder, name);
  await Deno.writeTextFile(
    leaf.cert,
    await Deno.readTextFile(ca.chain) + await Deno.readTextFile(path.join(ca.dir, "leaf.key")),
    { append: true },
  );
  return leaf;
}

/** A leaf for a.test in `<site>/certs`, and the fullchain.pem a web server loads for it. */
async function issueWithFullchain(ca: TestCa, site: string) {
  const leaf = await ca.issueLeaf(path.join(site, "certs"), "a.test");
  const fullchain = path.join(site, "fullchain.pem");
  await Deno.writeTextFile(
    fullchain,
    await Deno.readTextFile(leaf.cert) + await Deno.readTextFile(ca.chain),
  );
  return { leaf, fullchain };
}

interface TimedRun extends BotRun {
  /** Wall time of the run, in seconds. */
  seconds: number;
  /** Whether the run was killed at the deadline. */
  killed: boolean;
}

/**
 * runBot() with HAProxy's permissions, killed (SIGKILL: a SIGTERM lets the
 * bot end its work first) after `deadline` seconds: a run that would hang
 * fails the test instead of holding it; with its wall time.
 */
async function runBotWithin(
  deadline: number,
  cwd: string,
  args: string[],
): Promise<TimedRun> {
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", ...HAPROXY_PERMISSIONS, BOT, ...args],
    cwd,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let killed = false;
  const timer = setTimeout(() => {
    killed = true;
    child.kill("SIGKILL");
  }, deadline * 1000);
  try {
    const output = await child.output();
    return {
      code: output.code,
      stdout: decoder.decode(output.stdout),
      stderr: decoder.decode(output.stderr),
      seconds: (performance.now() - started) / 1000,
      killed,
    };
  } finally {
    clearTimeout(timer);
  }
}

/** A python3 script standing in for a socket, and what it printed first. */
interface FakeSocket {
  /** The words of its first line: what it found, and its port if any. */
  said: string[];
  close(): Promise<void>;
}

/**
 * Runs a python3 `script` (its arguments after it) until close(), once it
 * printed its first line (within 10 s, or it is killed and this throws).
 * Python, not Deno: the tests' permissions do not let them listen on a Unix
 * socket. Each script ends itself after 120 s should the test die first.
 */
async function startFakeSocket(script: string, args: string[] = []): Promise<FakeSocket> {
  const child = new Deno.Command("python3", {
    args: ["-c", `import signal\nsignal.alarm(120)\n${script}`, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const close = async () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // Ended already.
    }
    await reader.cancel().catch(() => {});
    await child.status;
  };
  const timer = setTimeout(() => close(), 10_000);
  let text = "";
  try {
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
  } finally {
    clearTimeout(timer);
  }
  if (!text.includes("\n")) {
    await close();
    throw new Error(`python3 said nothing of its socket: ${JSON.stringify(text)}`);
  }
  return { said: text.split("\n")[0].split(" "), close };
}

/** A Unix socket at argv[1] that takes connections and never answers. */
const HUNG_UNIX_SOCKET = `import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(8)
print("ready", flush=True)
held = [s.accept() for _ in range(8)]
time.sleep(120)
`;

/**
 * A TCP port on 127.0.0.1 whose SYNs go unanswered, as behind a firewall
 * that drops them: a listener that never accepts, with backlog 0, its
 * queue filled by connections of its own. It says "ready <port>" only once
 * a connection to it really hangs, else what happened.
 */
const SYN_DROPPING_PORT = `import socket, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(0)
port = s.getsockname()[1]
held = []
for _ in range(4):
    c = socket.socket()
    c.settimeout(0.5)
    try:
        c.connect(("127.0.0.1", port))
        held.append(c)
    except OSError:
        c.close()
        break
probe = socket.socket()
probe.settimeout(1.5)
try:
    probe.connect(("127.0.0.1", port))
    print("answered", port, flush=True)
except socket.timeout:
    print("ready", port, flush=True)
except OSError as error:
    print("refused", port, str(error).replace(" ", "_"), flush=True)
probe.close()
time.sleep(120)
`;

/**
 * A TCP port on 127.0.0.1 that resets each connection (SO_LINGER 0) as soon
 * as the request's first byte arrives. Reset before that, on loopback the
 * RST can beat the client's own check of its connect, which then fails
 * ("Cannot reach …: Connection reset by peer"), as it did in the old code.
 */
const RESETTING_PORT = `import socket, struct
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(8)
print("ready", s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(3)
    try:
        c.recv(1)
    except OSError:
        pass
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
`;

Deno.test("nginx staples the response ocspbot wrote, and the renewed one after on_change", async () => {
  await withCa(async (ca) => {
    const site = path.join(ca.dir, "site");
    const { leaf, fullchain } = await issueWithFullchain(ca, site);
    const response = path.join(site, "responses", "a.test.ocsp-resp");
    const port = freePort();
    const nginx = [
      "-p",
      site,
      "-c",
      path.join(site, "nginx.conf"),
      "-e",
      path.join(site, "error.log"),
    ];
    const temp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
      .map((kind) => `${kind}_temp_path ${site}/tmp;`).join(" ");
    await Deno.mkdir(path.join(site, "tmp"));
    await Deno.writeTextFile(
      path.join(site, "nginx.conf"),
      `user root; worker_processes 1; daemon off; pid ${site}/nginx.pid;
events {}
http {
  access_log off; ${temp}
  server {
    listen 127.0.0.1:${port} ssl;
    ssl_certificate ${fullchain};
    ssl_certificate_key ${ca.dir}/leaf.key;
    ssl_stapling on;
    ssl_stapling_file ${response};
    return 200 "ok";
  }
}
`,
    );
    const config = `minimum_validity: 6h\nocsp_folder: responses\nscan_keys:\n  - folder: certs\n`;
    // nginx starts only once the staple file exists; reloading it comes after.
    await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), config);
    const firstRun = await runBot(site);
    assertEquals(firstRun.code, 1, firstRun.stdout + firstRun.stderr);

    await withServer("nginx", nginx, port, async () => {
      const first = await stapled(port, ca);
      assertMatch(first, /Cert Status: good/);
      assertEquals(
        first,
        await responseText(response),
        "nginx staples other bytes than the file's",
      );
      assertEquals(await ca.verifiedStatus(response, leaf.cert), "good");

      await Deno.writeTextFile(
        path.join(site, "ocspbot.yaml"),
        config + `on_change: ${JSON.stringify(["nginx", ...nginx, "-s", "reload"])}\n`,
      );
      await nextSecond();
      const renewal = await runBot(site, ["--force"]);
      assertEquals(renewal.code, 1, renewal.stderr);
      assertMatch(renewal.stdout, /Ran on_change/);
      const renewed = await responseText(response);
      assertEquals(
        thisUpdate(renewed) !== thisUpdate(first),
        true,
        "the renewal made no new response",
      );
      const served = await waitFor(10, () => stapled(port, ca), (text) => text === renewed);
      assertEquals(served, renewed, "nginx still staples the old response after the reload");

      // --check asks nginx what it staples: the renewal, reloaded.
      const check = (extra = "") =>
        Deno.writeTextFile(
          path.join(site, "ocspbot.yaml"),
          config + `serve: 127.0.0.1:${port}\n` + extra,
        ).then(() => runBot(site, ["--check", "--json"]));
      const matching = await check();
      assertEquals(matching.code, 0, matching.stdout + matching.stderr);
      assertEquals(JSON.parse(matching.stdout).certificates["a.test"].served.verdict, "ok");
      assertMatch(
        matching.stderr,
        /^\[a\.test\] served: 127\.0\.0\.1:\d+ staples the stored response, or a newer one: OK$/m,
      );

      // Renewed without a reload: nginx staples an older response than the stored one.
      await nextSecond();
      assertEquals((await runBot(site, ["--force"])).code, 1);
      const stale = await check();
      assertEquals(stale.code, 1, stale.stdout + stale.stderr);
      assertMatch(
        stale.stderr,
        /staples an older response than the stored one .*: not reloaded since .*: WARNING$/m,
      );
      assertMatch(
        JSON.parse(stale.stdout).certificates["a.test"].served.message,
        /not reloaded since/,
      );

      // The certificate replaced (and nginx reloaded) without a new response: another certificate's.
      const next = await ca.issueLeaf(path.join(site, "next"), "a.test");
      await Deno.copyFile(next.cert, leaf.cert);
      await Deno.writeTextFile(
        fullchain,
        await Deno.readTextFile(next.cert) + await Deno.readTextFile(ca.chain),
      );
      await new Deno.Command("nginx", { args: [...nginx, "-s", "reload"] }).output();
      const replaced = await waitFor(10, () => check(), (run) => run.code === 2);
      assertEquals(replaced.code, 2, replaced.stdout + replaced.stderr);
      assertMatch(replaced.stderr, /staples a response for another certificate .*: CRITICAL$/m);
    });
  });
});

Deno.test("HAProxy staples the .ocsp file ocspbot wrote, and takes new ones on its socket", async (t) => {
  await withCa(async (ca) => {
    const site = path.join(ca.dir, "site");
    const certs = path.join(site, "certs");
    const leaf = await issueBundle(ca, certs, "a.test");
    const other = await ca.issueLeaf(path.join(site, "other"), "b.test");
    const socket = path.join(site, "haproxy.sock");
    const port = freePort();
    await writeHaproxyConfig(path.join(site, "haproxy.cfg"), port, leaf.cert, [
      `stats socket ${socket} level admin`,
    ]);
    const nowhere = path.join(site, "nowhere.sock");
    /** The top level names no socket HAProxy listens on; entries may name the real one. */
    const config = (sockets: { top?: string; scan?: string; b?: string }) =>
      `minimum_validity: 6h
ocsp_folder: certs
${sockets.top ? `haproxy_socket: ${sockets.top}` : ""}
scan_keys:
  - folder: certs
    ocsp_mask: "{domain}.pem.ocsp"
    ${sockets.scan ? `haproxy_socket: ${sockets.scan}` : ""}
domains:
  b.test:
    cert: ${other.cert}
    chain: ${other.chain}
    rootchain: ${other.rootchain}
    ocsp: b.test.pem.ocsp
    ${sockets.b ? `haproxy_socket: ${sockets.b}` : ""}
`;
    // Files first: HAProxy reads <crt>.ocsp when it starts.
    await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), config({}));
    assertEquals((await runBot(site)).code, 2);
    const response = `${leaf.cert}.ocsp`;

    await withServer("haproxy", ["-f", path.join(site, "haproxy.cfg"), "-db"], port, async () => {
      await t.step("the file it started with is stapled, as --check finds", async () => {
        const served = await stapled(port, ca);
        assertMatch(served, /Cert Status: good/);
        assertEquals(served, await responseText(response));
        await Deno.writeTextFile(
          path.join(site, "ocspbot.yaml"),
          config({}) + `serve: 127.0.0.1:${port}\n`,
        );
        const check = await runBot(site, ["--check", "--only", "a.test"]);
        assertEquals(check.code, 0, check.stdout + check.stderr);
        assertMatch(
          check.stdout,
          /^\[a\.test\] served: .* staples the stored response, or a newer one: OK$/m,
        );
      });
      await t.step("a renewal is pushed and served without a reload", async () => {
        // The scan entry's socket overrides the top level's, which leads nowhere.
        await Deno.writeTextFile(
          path.join(site, "ocspbot.yaml"),
          config({ top: nowhere, scan: socket, b: socket }),
        );
        const before = await stapled(port, ca);
        await nextSecond();
        const run = await runBot(site, ["--force", "--only", "a.test"], {}, HAPROXY_PERMISSIONS);
        assertEquals(run.code, 1, run.stdout + run.stderr);
        assertMatch(run.stdout, /\[a\.test\] Pushed the stored response to HAProxy/);
        const renewed = await responseText(response);
        assertEquals(thisUpdate(renewed) !== thisUpdate(before), true);
        assertEquals(await stapled(port, ca), renewed, "HAProxy still staples the old response");
      });
      await t.step(
        "a certificate HAProxy loaded no response for: a warning, not a failure",
        async () => {
          // HAProxy 2.6 says the same of a certificate it serves without a
          // response loaded at start as of one it does not serve: only a
          // reload (on_change) makes it load the file.
          const run = await runBot(site, ["--force", "--only", "b.test"], {}, HAPROXY_PERMISSIONS);
          assertEquals(run.code, 1, run.stdout + run.stderr);
          assertMatch(
            run.stderr,
            /\[b\.test\] WARNING: HAProxy \(socket ".*haproxy\.sock"\) does not know the certificate: it loaded no response for this certificate when it started .*set on_change to reload it; every run pushes the stored response again until it takes it /m,
          );
          const stored = await responseText(path.join(certs, "b.test.pem.ocsp"));
          assertMatch(stored, /Cert Status: good/);
        },
      );
      await t.step(
        "a push refused is an error, but the renewal counts; later runs push again",
        async () => {
          // Something else listens at the second socket, as after a typo in its port.
          const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
          const refusing = `ipv4@127.0.0.1:${(listener.addr as Deno.NetAddr).port}`;
          const answering = (async () => {
            for await (const connection of listener) {
              await connection.read(new Uint8Array(65536));
              await connection.write(new TextEncoder().encode("Unknown command.\n"));
              connection.close();
            }
          })();
          await Deno.writeTextFile(
            path.join(site, "ocspbot.yaml"),
            config({ scan: `[${socket}, ${refusing}]` }),
          );
          let run, again;
          try {
            run = await runBot(site, ["--force", "--only", "a.test"], {}, HAPROXY_PERMISSIONS);
            // Nothing due: the stored response goes to the one that refused it, which still does.
            again = await runBot(site, ["--only", "a.test"], {}, HAPROXY_PERMISSIONS);
          } finally {
            listener.close();
            await answering.catch(() => {});
          }
          // The file is the renewal: it counts, whatever one HAProxy said.
          assertEquals(run.code, 1, run.stdout + run.stderr);
          assertMatch(
            run.stdout,
            /\[a\.test\] Pushed the stored response to HAProxy \(socket ".*haproxy\.sock"\)/,
          );
          assertMatch(
            run.stderr,
            /\[a\.test\] ERROR: HAProxy \(socket "ipv4@127\.0\.0\.1:\d+"\) refused the new response: Unknown command\.; it keeps its old response, and every run pushes the stored one again until it takes it/,
          );
          // A refusal that lasts fails the certificate in the runs after it.
          assertEquals(again.code, 255, again.stdout + again.stderr);
          assertMatch(
            again.stdout,
            /\[a\.test\] Pushing the stored response again to HAProxy \(socket "ipv4@127\.0\.0\.1:\d+"\), which has not taken it since /,
          );
          assertEquals(
            again.stdout.includes("haproxy.sock"),
            false,
            "the HAProxy that took it was pushed to again",
          );
          assertMatch(again.stderr, /refused the new response: Unknown command\./);
        },
      );
      await t.step("an entry without a socket of its own uses the top level's", async () => {
        await Deno.writeTextFile(
          path.join(site, "ocspbot.yaml"),
          config({ top: nowhere, b: socket }),
        );
        const run = await runBot(site, ["--force", "--only", "a.test"], {}, HAPROXY_PERMISSIONS);
        assertEquals(run.code, 1, run.stdout + run.stderr);
        assertMatch(run.stderr, /ERROR: Cannot reach HAProxy's socket ".*nowhere\.sock"/);
      });
    });
  });
});

Deno.test("a fleet of HAProxies: each socket gets the renewal, over Unix or TCP; one unreachable is named", async () => {
  await withCa(async (ca) => {
    const site = path.join(ca.dir, "site");
    const certs = path.join(site, "certs");
    const leaf = await issueBundle(ca, certs, "a.test");
    const [unixPort, tcpPort, apiPort] = [freePort(), freePort(), freePort()];
    const socket = path.join(site, "haproxy.sock");
    await writeHaproxyConfig(path.join(site, "unix.cfg"), unixPort, leaf.cert, [
      `stats socket ${socket} level admin`,
    ]);
    await writeHaproxyConfig(path.join(site, "tcp.cfg"), tcpPort, leaf.cert, [
      `stats socket ipv4@127.0.0.1:${apiPort} level admin`,
    ]);
    const config = (sockets: string[]) =>
      `minimum_validity: 6h\nocsp_folder: certs\nhaproxy_socket: [${sockets.join(", ")}]\n` +
      `scan_keys:\n  - folder: certs\n    ocsp_mask: "{domain}.pem.ocsp"\n`;
    await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), config([]));
    assertEquals((await runBot(site)).code, 1);
    const response = `${leaf.cert}.ocsp`;
    const haproxy = (name: string) => ["-f", path.join(site, name), "-db"];
    await withServer("haproxy", haproxy("unix.cfg"), unixPort, async () => {
      await withServer("haproxy", haproxy("tcp.cfg"), tcpPort, async () => {
        const nowhere = path.join(site, "nowhere.sock");
        await Deno.writeTextFile(
          path.join(site, "ocspbot.yaml"),
          config([socket, nowhere, `ipv4@127.0.0.1:${apiPort}`]),
        );
        await nextSecond();
        const run = await runBot(site, ["--force"], {}, HAPROXY_PERMISSIONS);
        assertEquals(run.code, 1, run.stdout + run.stderr);
        assertMatch(run.stderr, /ERROR: Cannot reach HAProxy's socket ".*nowhere\.sock"/);
        assertMatch(
          run.stdout,
          /Pushed the stored response to HAProxy \(socket ".*haproxy\.sock"\)/,
        );
        assertMatch(
          run.stdout,
          new RegExp(
            `Pushed the stored response to HAProxy \\(socket "ipv4@127\\.0\\.0\\.1:${apiPort}"\\)`,
          ),
        );
        const renewed = await responseText(response);
        assertEquals(await stapled(unixPort, ca), renewed, "the HAProxy on a Unix socket");
        assertEquals(await stapled(tcpPort, ca), renewed, "the HAProxy on TCP");
      });
    });
  });
});

Deno.test("a first run against an HAProxy started without a response: a warning, and on_change reloads it", async () => {
  await withCa(async (ca) => {
    const site = path.join(ca.dir, "site");
    const certs = path.join(site, "certs");
    const leaf = await issueBundle(ca, certs, "a.test");
    const port = freePort();
    const socket = path.join(site, "haproxy.sock");
    await writeHaproxyConfig(path.join(site, "haproxy.cfg"), port, leaf.cert, [
      `stats socket ${socket} level admin`,
    ]);
    const reloaded = path.join(site, "reloaded");
    await Deno.writeTextFile(
      path.join(site, "ocspbot.yaml"),
      `minimum_validity: 6h\nocsp_folder: certs\nhaproxy_socket: ${socket}\n` +
        `on_change: [touch, ${reloaded}]\n` +
        `scan_keys:\n  - folder: certs\n    ocsp_mask: "{domain}.pem.ocsp"\n`,
    );
    const haproxy = ["-f", path.join(site, "haproxy.cfg"), "-db"];
    await withServer("haproxy", haproxy, port, async () => {
      assertEquals(await stapled(port, ca), "", "HAProxy stapled before any response existed");
      const run = await runBot(site, [], {}, HAPROXY_PERMISSIONS);
      assertEquals(run.code, 1, run.stdout + run.stderr);
      assertMatch(
        run.stderr,
        /WARNING: HAProxy \(socket ".*"\) does not know the certificate: it loaded no response for this certificate when it started .* the reload on_change makes; every run pushes the stored response again until it takes it /m,
      );
      assert(await exists(reloaded), "on_change did not run");
    });
    // What on_change stands for here: HAProxy loads the file when it starts again.
    await withServer("haproxy", haproxy, port, async () => {
      assertEquals(await stapled(port, ca), await responseText(`${leaf.cert}.ocsp`));
      // The next run pushes it once more, and this time it is taken: nothing is left pending.
      const next = await runBot(site, [], {}, HAPROXY_PERMISSIONS);
      assertEquals(next.code, 0, next.stdout + next.stderr);
      assertMatch(next.stdout, /Pushing the stored response again to HAProxy \(socket ".*"\)/);
      assertMatch(next.stdout, /Pushed the stored response to HAProxy \(socket ".*"\)/);
      const check = await runBot(site, ["--check"]);
      assertEquals(check.code, 0, check.stdout + check.stderr);
    });
  });
});

Deno.test("a fleet where one HAProxy is down at the renewal: counted, on_change runs, and the next run pushes again", async () => {
  await withCa(async (ca) => {
    const site = path.join(ca.dir, "site");
    const certs = path.join(site, "certs");
    const leaf = await issueBundle(ca, certs, "a.test");
    const response = `${leaf.cert}.ocsp`;
    const [unixPort, tcpPort, apiPort] = [freePort(), freePort(), freePort()];
    const socket = path.join(site, "haproxy.sock");
    const tcpSocket = `ipv4@127.0.0.1:${apiPort}`;
    const reloaded = path.join(site, "reloaded");
    const config = (sockets: string[]) =>
      `minimum_validity: 6h\nocsp_folder: certs\non_change: [touch, ${reloaded}]\n` +
      (sockets.length > 0 ? `haproxy_socket: [${sockets.join(", ")}]\n` : "") +
      `scan_keys:\n  - folder: certs\n    ocsp_mask: "{domain}.pem.ocsp"\n`;
    // R1, for both HAProxies to load at start: set ssl ocsp-response needs one loaded.
    await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), config([]));
    const first = await runBot(site);
    assertEquals(first.code, 1, first.stdout + first.stderr);
    await Deno.remove(reloaded);
    // The TCP HAProxy's own copy of the bundle and of R1: started later, it must not load R2.
    const tcpCerts = path.join(site, "tcp-certs");
    await Deno.mkdir(tcpCerts);
    const tcpBundle = path.join(tcpCerts, "a.test.pem");
    await Deno.copyFile(leaf.cert, tcpBundle);
    await Deno.copyFile(response, `${tcpBundle}.ocsp`);
    const r1 = await responseText(response);
    assertMatch(r1, /Cert Status: good/);
    await writeHaproxyConfig(path.join(site, "unix.cfg"), unixPort, leaf.cert, [
      `stats socket ${socket} level admin`,
    ]);
    await writeHaproxyConfig(path.join(site, "tcp.cfg"), tcpPort, tcpBundle, [
      `stats socket ${tcpSocket} level admin`,
    ]);
    await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), config([socket, tcpSocket]));
    const haproxy = (name: string) => ["-f", path.join(site, name), "-db"];
    const tcpNamed = tcpSocket.replaceAll(".", "\\.");

    await withServer("haproxy", haproxy("unix.cfg"), unixPort, async () => {
      assertEquals(await stapled(unixPort, ca), r1);
      await nextSecond();
      // The TCP HAProxy is down: nothing listens on its API port.
      const renewal = await runBot(site, ["--force"], {}, HAPROXY_PERMISSIONS);
      assertEquals(renewal.code, 1, renewal.stdout + renewal.stderr);
      assert(await exists(reloaded), "on_change did not run");
      assertMatch(
        renewal.stderr,
        new RegExp(
          `\\[a\\.test\\] ERROR: Cannot reach HAProxy's socket "${tcpNamed}": .*; it keeps its old response, and every run pushes the stored one again until it takes it`,
        ),
      );
      assertMatch(
        renewal.stdout,
        /\[a\.test\] Pushed the stored response to HAProxy \(socket ".*haproxy\.sock"\)/,
      );
      const r2 = await responseText(response);
      assertNotEquals(thisUpdate(r2), thisUpdate(r1), "the renewal made no new response");
      assertEquals(await stapled(unixPort, ca), r2, "the HAProxy up does not staple the renewal");

      const pending = await runBot(site, ["--check"]);
      assertEquals(pending.code, 1, pending.stdout + pending.stderr);
      assertMatch(
        pending.stdout + pending.stderr,
        new RegExp(
          `^\\[a\\.test\\] .*HAProxy \\(socket "${tcpNamed}"\\) has not taken it since .*`,
          "m",
        ),
      );

      await withServer("haproxy", haproxy("tcp.cfg"), tcpPort, async () => {
        // Back, with the response it loaded at start: only a push gives it R2.
        assertEquals(await stapled(tcpPort, ca), r1, "the TCP HAProxy started with R2 already");
        await Deno.remove(reloaded);
        const next = await runBot(site, [], {}, HAPROXY_PERMISSIONS);
        assertEquals(next.code, 0, next.stdout + next.stderr);
        assertMatch(
          next.stdout,
          new RegExp(
            `\\[a\\.test\\] Pushing the stored response again to HAProxy \\(socket "${tcpNamed}"\\), which has not taken it since `,
          ),
        );
        assertMatch(
          next.stdout,
          new RegExp(
            `\\[a\\.test\\] Pushed the stored response to HAProxy \\(socket "${tcpNamed}"\\)`,
          ),
        );
        assertEquals(
          next.stdout.includes("haproxy.sock"),
          false,
          "the Unix HAProxy was pushed to again",
        );
        assertEquals(await responseText(response), r2, "the run renewed the response");
        assertEquals(await stapled(tcpPort, ca), r2, "the TCP HAProxy still staples R1");
        assertEquals(await stapled(unixPort, ca), r2);
        const check = await runBot(site, ["--check"]);
        assertEquals(check.code, 0, check.stdout + check.stderr);
        // Taken: the run after pushes nothing.
        const quiet = await runBot(site, [], {}, HAPROXY_PERMISSIONS);
        assertEquals(quiet.code, 0, quiet.stdout + quiet.stderr);
        assertEquals(quiet.stdout.includes("Push"), false, quiet.stdout);
      });
    });
  });
});

Deno.test("a hung socket in the list: the live HAProxy gets the renewal, the run counts it and runs on_change", async () => {
  await withCa(async (ca) => {
    const site = path.join(ca.dir, "site");
    const certs = path.join(site, "certs");
    const leaf = await issueBundle(ca, certs, "a.test");
    const response = `${leaf.cert}.ocsp`;
    const port = freePort();
    const socket = path.join(site, "haproxy.sock");
    const hung = path.join(site, "hung.sock");
    const reloaded = path.join(site, "reloaded");
    await writeHaproxyConfig(path.join(site, "haproxy.cfg"), port, leaf.cert, [
      `stats socket ${socket} level admin`,
    ]);
    const config = (sockets: string) =>
      `minimum_validity: 6h\nocsp_folder: certs\ntimeout: 2\n${sockets}` +
      `scan_keys:\n  - folder: certs\n    ocsp_mask: "{domain}.pem.ocsp"\n`;
    await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), config(""));
    assertEquals((await runBot(site)).code, 1);
    // The hung one first: the live one after it gets the renewal all the same.
    await Deno.writeTextFile(
      path.join(site, "ocspbot.yaml"),
      config(`haproxy_socket: [${hung}, ${socket}]\non_change: [touch, ${reloaded}]\n`),
    );
    const silent = await startFakeSocket(HUNG_UNIX_SOCKET, [hung]);
    try {
      await withServer("haproxy", ["-f", path.join(site, "haproxy.cfg"), "-db"], port, async () => {
        const before = await stapled(port, ca);
        assertMatch(before, /Cert Status: good/);
        await nextSecond();
        const run = await runBotWithin(30, site, ["--force", "--json"]);
        console.log(`the run with a hung socket took ${run.seconds.toFixed(2)} s`);
        assertEquals(run.killed, false, "the run hung");
        assertEquals(run.code, 1, run.stdout + run.stderr);
        assertEquals(JSON.parse(run.stdout).certificates["a.test"].action, "renewed");
        assert(await exists(reloaded), "on_change did not run");
        assertMatch(
          run.stderr,
          /\[a\.test\] ERROR: HAProxy's socket ".*hung\.sock" did not answer within 2 s; it keeps its old response/,
        );
        const renewed = await responseText(response);
        assertNotEquals(thisUpdate(renewed), thisUpdate(before));
        assertEquals(await stapled(port, ca), renewed, "the live HAProxy staples the old response");
        assert(run.seconds < 15, `the run took ${run.seconds} s`);
      });
    } finally {
      await silent.close();
    }
  });
});

Deno.test("a TCP socket whose SYNs are dropped costs timeout, not the kernel's two minutes", async () => {
  await withCa(async (ca) => {
    const dropping = await startFakeSocket(SYN_DROPPING_PORT);
    try {
      const [found, port] = dropping.said;
      assertEquals(found, "ready", `no port that drops SYNs here: ${dropping.said.join(" ")}`);
      const site = await makeSite(
        ca,
        ["a.test"],
        BASE_CONFIG + `timeout: 3\nhaproxy_socket: ipv4@127.0.0.1:${port}\n`,
      );
      const run = await runBotWithin(30, site, ["--force"]);
      console.log(`the run with SYNs dropped took ${run.seconds.toFixed(2)} s`);
      assertEquals(run.killed, false, "the run hung, as the connection did");
      assertEquals(run.code, 1, run.stdout + run.stderr);
      assertMatch(
        run.stderr,
        new RegExp(
          `\\[a\\.test\\] ERROR: Cannot reach HAProxy's socket "ipv4@127\\.0\\.0\\.1:${port}": no connection within 3 s; `,
        ),
      );
      assert(run.seconds < 12, `the run took ${run.seconds} s`);
    } finally {
      await dropping.close();
    }
  });
});

Deno.test("a socket that resets at once is named as such, not as a timeout", async () => {
  await withCa(async (ca) => {
    const resetting = await startFakeSocket(RESETTING_PORT);
    try {
      const [, port] = resetting.said;
      const site = await makeSite(
        ca,
        ["a.test"],
        BASE_CONFIG + `timeout: 5\nhaproxy_socket: ipv4@127.0.0.1:${port}\n`,
      );
      const run = await runBotWithin(30, site, ["--force"]);
      console.log(`the run with a resetting socket took ${run.seconds.toFixed(2)} s`);
      assertEquals(run.killed, false, "the run hung");
      const named = `HAProxy's socket "ipv4@127\\.0\\.0\\.1:${port}"`;
      assertMatch(
        run.stderr,
        new RegExp(
          `\\[a\\.test\\] ERROR: ${named} (broke the connection before answering: .*|closed the connection without an answer); it keeps its old response`,
        ),
      );
      assertEquals(run.stderr.includes("did not answer within"), false, run.stderr);
      assertEquals(run.code, 1, run.stdout + run.stderr);
      assert(run.seconds < 4, `the run took ${run.seconds} s`);
    } finally {
      await resetting.close();
    }
  });
});

Deno.test("HAProxy's crt <dir> still loads after a rejected answer and with backup_folder", async (t) => {
  await withCa(async (ca) => {
    const site = path.join(ca.dir, "site");
    const crtFolder = path.join(site, "crt");
    const leaf = await ca.issueLeaf(path.join(site, "certs"), "a.test");
    // The crt folder HAProxy loads whole: a bundle, and its <crt>.ocsp beside it.
    await Deno.mkdir(crtFolder);
    const bundle = path.join(crtFolder, "a.test.pem");
    await Deno.writeTextFile(
      bundle,
      await Deno.readTextFile(leaf.cert) + await Deno.readTextFile(ca.chain) +
        await Deno.readTextFile(path.join(ca.dir, "leaf.key")),
    );
    const haproxyConfig = await writeHaproxyConfig(
      path.join(site, "haproxy.cfg"),
      freePort(),
      `${crtFolder}/`,
    );
    const botConfig = (extra: string) =>
      `minimum_validity: 6h
ocsp_folder: crt
retries: 0
domains:
  a.test:
    cert: ${bundle}
    chain: ${leaf.chain}
    rootchain: ${leaf.rootchain}
    ocsp: a.test.pem.ocsp
${extra}`;
    await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), botConfig(""));
    assertEquals((await runBot(site)).code, 1);
    assertEquals((await haproxyCheck(haproxyConfig)).code, 0, "the test's own setup does not load");

    await t.step("after a rejected answer", async () => {
      ca.mode = { fixed: new Uint8Array([0x30, 0x03, 0x0a, 0x01, 0x03]) }; // tryLater
      const run = await runBot(site, ["--force"]);
      assertEquals(run.code, 255, run.stdout + run.stderr);
      assertMatch(run.stderr, /the answer is in ".*\/crt\/\.a\.test\.pem\.ocsp\.rejected"/);
      const check = await haproxyCheck(haproxyConfig);
      assertEquals(check.code, 0, check.output);
      ca.mode = "good";
    });

    await t.step("with backups in backup_folder", async () => {
      await Deno.writeTextFile(
        path.join(site, "ocspbot.yaml"),
        botConfig("make_backups: true\nbackup_folder: backups\n"),
      );
      const run = await runBot(site, ["--force"]);
      assertEquals(run.code, 1, run.stdout + run.stderr);
      assertEquals([...Deno.readDirSync(path.join(site, "backups"))].length, 1);
      const check = await haproxyCheck(haproxyConfig);
      assertEquals(check.code, 0, check.output);
    });

    await t.step(
      "with backups beside the responses, as the Python bot kept them, it fails",
      async () => {
        await Deno.writeTextFile(
          path.join(site, "ocspbot.yaml"),
          botConfig("make_backups: true\n"),
        );
        assertEquals((await runBot(site, ["--force"])).code, 1);
        const check = await haproxyCheck(haproxyConfig);
        assertEquals(check.code !== 0, true, "haproxy -c passes: this test could not fail");
        assertMatch(check.output, /unable to load .*a\.test\.pem\.ocsp-\d{8}-\d{6}/);
      },
    );
  });
});

Deno.test("only the issuer or a responder it authorised signs a staple, as GnuTLS's ocsptool agrees", async (t) => {
  await withCa(async (ca) => {
    const other = await TestCa.create({ label: "B" });
    try {
      const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "timeout: 2\nretries: 0\n");
      const certs = path.join(site, "certs");
      // A rollover: the rootchain bundles the old CA and the new one.
      await Deno.writeTextFile(
        path.join(certs, "a.test-rootchain.pem"),
        (await Deno.readTextFile(ca.rootchain)) + (await Deno.readTextFile(other.rootchain)),
      );
      const cases: [string, KeyPair, boolean][] = [
        ["a responder the issuer authorised", ca.keyPair("signer"), true],
        ["the issuer itself", ca.keyPair("intermediate"), true],
        ["the root", ca.keyPair("root"), false],
        ["another CA's intermediate, in the rootchain", other.keyPair("intermediate"), false],
        ["a responder another CA authorised", other.keyPair("signer"), false],
      ];
      for (const [name, signer, accepted] of cases) {
        await t.step(`${name}: ${accepted ? "stapled" : "refused"}`, async () => {
          await Deno.remove(path.join(site, "responses"), { recursive: true }).catch(() => {});
          ca.mode = { signer };
          const run = await runBot(site);
          const answer = accepted
            ? response(site, "a.test")
            : path.join(site, "responses", ".a.test.ocsp-resp.rejected");
          const gnutls = await new Deno.Command("ocsptool", {
            args: ["--verify-response", "--load-signer", ca.chain, "--infile", answer],
            stdout: "piped",
            stderr: "piped",
          }).output();
          const said = decoder.decode(gnutls.stdout) + decoder.decode(gnutls.stderr);
          assertEquals(gnutls.code === 0, accepted, `ocsptool disagrees: ${said}`);
          if (accepted) {
            assertEquals(run.code, 1, run.stdout + run.stderr);
          } else {
            assertEquals(run.code, 255, run.stdout + run.stderr);
            assertMatch(run.stderr, /new response does not verify/);
            assertEquals(await exists(response(site, "a.test")), false);
          }
        });
      }
      await t.step("a stored response the root signed is replaced", async () => {
        ca.mode = { signer: ca.keyPair("root") };
        await Deno.remove(path.join(site, "responses"), { recursive: true }).catch(() => {});
        await Deno.mkdir(path.join(site, "responses"));
        await Deno.writeFile(
          response(site, "a.test"),
          await ca.respond(path.join(certs, "a.test.pem"), "root"),
        );
        ca.mode = "good";
        const run = await runBot(site);
        assertEquals(run.code, 1, run.stdout + run.stderr);
        assertMatch(
          run.stdout,
          /stored response does not verify: .*signed by a certificate that is neither/,
        );
      });
    } finally {
      await other.close();
    }
  });
});

Deno.test("a responder's stale answers and a clock ahead are named, in a run and in --check", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "timeout: 2\nretries: 0\n");
    const HOUR = 3600_000;
    await t.step("a cache's answer that expired an hour ago", async () => {
      ca.clockOffsetMs = -2 * HOUR;
      ca.validityMinutes = 60;
      const run = await runBot(site);
      assertEquals(run.code, 255, run.stdout + run.stderr);
      assertMatch(
        run.stderr,
        /ERROR: new response expired already, at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: the responder serves a stale answer/,
      );
    });
    await t.step("a responder 10 minutes ahead", async () => {
      ca.clockOffsetMs = 10 * 60_000;
      ca.validityMinutes = 24 * 60;
      const run = await runBot(site);
      assertEquals(run.code, 255, run.stdout + run.stderr);
      assertMatch(
        run.stderr,
        /ERROR: new response has a thisUpdate \(.*\) (9|10) min ahead of this machine's clock/,
      );
    });
    await t.step(
      "--check on a stored response that expired an hour ago: CRITICAL, saying so",
      async () => {
        ca.clockOffsetMs = -2 * HOUR;
        ca.validityMinutes = 60;
        await Deno.mkdir(path.join(site, "responses"), { recursive: true });
        await Deno.writeFile(
          response(site, "a.test"),
          await ca.respond(path.join(site, "certs", "a.test.pem")),
        );
        const check = await runBot(site, ["--check"]);
        assertEquals(check.code, 2, check.stdout + check.stderr);
        assertMatch(check.stdout, /^\[a\.test\] stored response expired at .* UTC: CRITICAL$/m);
      },
    );
  });
});

Deno.test("Exim staples the README's recipe over STARTTLS, and a renewal without a reload", async () => {
  await withCa(async (ca) => {
    const root = path.join(ca.dir, "root");
    const moved = (text: string) => text.replace(/(^|[\s=])\/(?=[\w.])/gm, `$1${root}/`);
    const exim = (await readmeBlocks()).get("exim config");
    assert(exim !== undefined, "README.md and docs/*.md have no <!-- test: exim config -->");
    const tls = Object.fromEntries(
      moved(exim).split("\n").filter(Boolean).map((line) => line.split(/\s*=\s*/)),
    );
    // The files the recipe names, as a private CA's mail server has them.
    const leaf = await ca.issueLeaf(path.join(ca.dir, "issued"), "mail.example.com");
    await writeWithFolders(
      tls.tls_certificate,
      await Deno.readTextFile(leaf.cert) + await Deno.readTextFile(ca.chain),
    );
    await Deno.copyFile(path.join(ca.dir, "leaf.key"), tls.tls_privatekey);
    await writeWithFolders(
      path.join(root, "etc/ssl/private-ca/rootchain.pem"),
      await Deno.readTextFile(ca.rootchain),
    );
    await Deno.writeTextFile(path.join(root, "ocspbot.yaml"), await readmeRecipe("exim", root));
    // Run once before Exim starts, as the README says.
    const first = await runBot(root);
    assertEquals(first.code, 1, first.stdout + first.stderr);
    const server = await startExim({
      dir: ca.dir,
      cert: tls.tls_certificate,
      key: tls.tls_privatekey,
      ocspFile: tls.tls_ocsp_file,
    });
    try {
      const staple = () => servedStaple(server.port, { servername: "mail.example.com" });
      const served = await staple();
      assertMatch(served ?? "", /Cert Status: good/);
      assertEquals(served, await responseText(tls.tls_ocsp_file));
      // --check asks Exim over STARTTLS, with the certificate's name as SNI.
      await Deno.writeTextFile(
        path.join(root, "ocspbot.yaml"),
        await readmeRecipe("exim", root) + `serve: smtp://127.0.0.1:${server.port}\n`,
      );
      const check = await runBot(root, ["--check"]);
      assertEquals(check.code, 0, check.stdout + check.stderr);
      assertMatch(check.stdout, /served: smtp:\/\/127\.0\.0\.1:\d+ staples the stored response/);
      await nextSecond();
      const renewal = await runBot(root, ["--force"]);
      assertEquals(renewal.code, 1, renewal.stdout + renewal.stderr);
      const renewed = await responseText(tls.tls_ocsp_file);
      assertNotEquals(thisUpdate(renewed), thisUpdate(served ?? ""));
      // No reload: Exim watches the folder, and loads the file again 5 s after it changed.
      const later = await waitFor(15, staple, (text) => text === renewed);
      assertEquals(later, renewed, "Exim kept stapling the old response without a reload");
    } finally {
      await server.close();
    }
  });
});

/**
 * What the response in `der` says of certbot's live certificate, verified
 * against its chain and `caFile`; undefined when it does not verify.
 */
async function certbotStatus(
  der: string,
  live: { cert: string; chain: string },
  caFile: string,
): Promise<string | undefined> {
  const { code, stdout } = await new Deno.Command("openssl", {
    args: [
      "ocsp",
      "-respin",
      der,
      "-issuer",
      live.chain,
      "-cert",
      live.cert,
      "-CAfile",
      caFile,
      "-no_nonce",
    ],
    stderr: "null",
  }).output();
  return code === 0 ? /: (good|revoked|unknown)$/m.exec(decoder.decode(stdout))?.[1] : undefined;
}

Deno.test("certbot renews against pebble, and the README's deploy hook staples the new certificate before certbot returns", async () => {
  await withTempDir("ocspbot-acme-", async (dir) => {
    await Deno.mkdir(path.join(dir, "pebble"));
    const pebble = await startPebble(path.join(dir, "pebble"));
    try {
      const root = path.join(dir, "machine");
      const acme = path.join(dir, "certbot");
      // certbot's folders are the machine's /etc/letsencrypt.
      await Deno.mkdir(path.join(root, "etc"), { recursive: true });
      await Deno.mkdir(certbotConfigDir(acme), { recursive: true });
      await Deno.symlink(certbotConfigDir(acme), path.join(root, "etc/letsencrypt"));
      const config = path.join(root, "etc/ocspbot/ocspbot.yaml");
      await writeWithFolders(config, await readmeRecipe("certbot", root));
      await installBot(root);
      const hook = path.join(root, "etc/letsencrypt/renewal-hooks/deploy/ocspbot");
      await writeWithFolders(hook, await readmeHook("certbot", root));
      await Deno.chmod(hook, 0o755);
      // The recipe verifies against the system's CA bundle: pebble's root.
      const env = { SSL_CERT_FILE: await pebble.rootFile() };

      const { live } = await certbotObtain(pebble, acme, ["a.test"], [], { env });
      const hourly = await runBot(root, [config], env);
      assertEquals(hourly.code, 1, hourly.stdout + hourly.stderr);
      const der = path.join(root, "var/lib/ocspbot/a.test.der");
      const verify = () => certbotStatus(der, live, env.SSL_CERT_FILE);
      assertEquals(await verify(), "good");
      const before = await Deno.readTextFile(live.cert);

      const renewal = await certbotRenew(pebble, acme, "a.test", [], { env });
      assertNotEquals(await Deno.readTextFile(live.cert), before, "certbot renewed nothing");
      // Before certbot returned, the hook left a good response for the new certificate.
      assertEquals(await verify(), "good", renewal.output);
      assert(await exists(path.join(root, "reloaded-nginx")), "on_change did not run");
    } finally {
      await pebble.close();
    }
  });
});

Deno.test("certbot's deploy hook from / keeps the hourly run's files with a relative ocsp_folder", async () => {
  // What the old code did with the hook's cwd, /, is removed afterwards, if it was not there before.
  const strayFolder = "/staples";
  const strayBefore = await exists(strayFolder);
  await withTempDir("ocspbot-acme-", async (dir) => {
    await Deno.mkdir(path.join(dir, "pebble"));
    const pebble = await startPebble(path.join(dir, "pebble"));
    try {
      const root = path.join(dir, "machine");
      const acme = path.join(dir, "certbot");
      await Deno.mkdir(path.join(root, "etc"), { recursive: true });
      await Deno.mkdir(certbotConfigDir(acme), { recursive: true });
      await Deno.symlink(certbotConfigDir(acme), path.join(root, "etc/letsencrypt"));
      // The README's recipe, with its staples in a folder relative to the config's.
      const etc = path.join(root, "etc/ocspbot");
      const recipe = await readmeRecipe("certbot", root);
      const absolute = `ocsp_folder: ${root}/var/lib/ocspbot\n`;
      assert(recipe.includes(absolute), `the recipe has no "${absolute.trim()}" line`);
      await writeWithFolders(
        path.join(etc, "ocspbot.yaml"),
        recipe.replace(absolute, "ocsp_folder: staples\n"),
      );
      await installBot(root);
      const hook = path.join(root, "etc/letsencrypt/renewal-hooks/deploy/ocspbot");
      await writeWithFolders(hook, await readmeHook("certbot", root));
      await Deno.chmod(hook, 0o755);
      const env = { SSL_CERT_FILE: await pebble.rootFile() };
      const staples = path.join(etc, "staples");
      const der = path.join(staples, "a.test.der");
      const state = path.join(staples, DEFAULT_STATE_FILE);

      const { live } = await certbotObtain(pebble, acme, ["a.test"], [], { env });
      // The hourly run, as the README's cron line makes it: cd /etc/ocspbot && ocspbot ocspbot.yaml
      const hourly = await runBot(etc, ["ocspbot.yaml"], env);
      assertEquals(hourly.code, 1, hourly.stdout + hourly.stderr);
      const verify = () => certbotStatus(der, live, env.SSL_CERT_FILE);
      assertEquals(await verify(), "good");
      assert(await exists(state), "the hourly run kept no state beside its staples");
      const stateBefore = await Deno.readTextFile(state);
      const before = await Deno.readTextFile(live.cert);

      // certbot's working directory, which the hook inherits, is / as under its timer.
      const renewal = await certbotRenew(pebble, acme, "a.test", [], { env, cwd: "/" });
      assertNotEquals(await Deno.readTextFile(live.cert), before, "certbot renewed nothing");
      const strayed = !strayBefore && await exists(strayFolder);
      assertEquals(
        await verify(),
        "good",
        `no good response for the new certificate${
          strayed ? ` (the hook wrote to ${strayFolder} instead)` : ""
        }:\n${renewal.output}`,
      );
      assertNotEquals(
        await Deno.readTextFile(state),
        stateBefore,
        "the hook did not use the state",
      );
      assertEquals(await exists(strayFolder), strayBefore, `the hook wrote to ${strayFolder}`);
      // One state file on this machine: the hourly run's, which the hook used.
      const states: string[] = [];
      const walk = (folder: string) => {
        for (const entry of Deno.readDirSync(folder)) {
          const file = path.join(folder, entry.name);
          if (entry.isDirectory) walk(file);
          else if (entry.name === DEFAULT_STATE_FILE) states.push(file);
        }
      };
      walk(dir);
      assertEquals(states, [state]);
      // The next hourly run finds the hook's response, for the new certificate: nothing to do.
      const after = await runBot(etc, ["ocspbot.yaml"], env);
      assertEquals(after.code, 0, after.stdout + after.stderr);
    } finally {
      await pebble.close();
    }
  }).finally(async () => {
    if (!strayBefore) await Deno.remove(strayFolder, { recursive: true }).catch(() => {});
  });
});

Deno.test("promtool accepts the metrics_file of a run and of --check", async () => {
  await withCa(async (ca) => {
    const site = path.join(ca.dir, "site");
    await ca.issueLeaf(path.join(site, "certs"), "a.test");
    await ca.issueLeaf(path.join(site, "certs"), 'quote"and\\slash.test');
    await Deno.writeTextFile(
      path.join(site, "ocspbot.yaml"),
      "minimum_validity: 6h\nocsp_folder: responses\nmetrics_file: ocspbot.prom\nscan_keys:\n  - folder: certs\n",
    );
    const promtool = async () => {
      const child = new Deno.Command("promtool", {
        args: ["check", "metrics"],
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const writer = child.stdin.getWriter();
      await writer.write(await Deno.readFile(path.join(site, "ocspbot.prom")));
      await writer.close();
      const { code, stdout, stderr } = await child.output();
      return { code, output: decoder.decode(stdout) + decoder.decode(stderr) };
    };
    assertEquals((await runBot(site)).code, 2);
    const afterRun = await promtool();
    assertEquals([afterRun.code, afterRun.output], [0, ""]);
    assertEquals((await runBot(site, ["--check"])).code, 0);
    const afterCheck = await promtool();
    assertEquals([afterCheck.code, afterCheck.output], [0, ""]);
    assertMatch(
      await Deno.readTextFile(path.join(site, "ocspbot.prom")),
      /^ocspbot_last_attempt_success\{id="quote\\"and\\\\slash\.test"\} 1$/m,
    );
  });
});

Deno.test("HAProxy's crt folder of key-first bundles is its own ocsp_folder, and staples what ocspbot writes", async () => {
  await withCa(async (ca) => {
    const site = path.join(ca.dir, "site");
    const crt = path.join(site, "crt");
    await Deno.mkdir(crt, { recursive: true });
    const key = await Deno.readTextFile(path.join(ca.dir, "leaf.key"));
    for (const name of ["a.test", "b.test"]) {
      const leaf = await ca.issueLeaf(path.join(site, "issued"), name);
      // HAProxy's own order: the key first, then the certificate and its intermediate.
      await Deno.writeTextFile(
        path.join(crt, `${name}.pem`),
        key + await Deno.readTextFile(leaf.cert) + await Deno.readTextFile(ca.chain),
      );
    }
    await Deno.writeTextFile(
      path.join(site, "ocspbot.yaml"),
      `minimum_validity: 6h
ocsp_folder: crt
scan_keys:
  - folder: crt
    cert_mask: "{domain}.pem"
    chain_mask: null
    rootchain_mask: null
    ocsp_mask: "{domain}.pem.ocsp"
`,
    );
    const port = freePort();
    const config = await writeHaproxyConfig(path.join(site, "haproxy.cfg"), port, `${crt}/`);
    // The test root stands for the system's CA bundle.
    const systemStore = { SSL_CERT_FILE: path.join(ca.dir, "root.pem") };
    const first = await runBot(site, [], systemStore);
    assertEquals(first.code, 2, first.stdout + first.stderr);
    const second = await runBot(site, [], systemStore);
    assertEquals(second.code, 0, second.stdout + second.stderr);
    const check = await haproxyCheck(config);
    assertEquals(check.code, 0, check.output);
    await withServer("haproxy", ["-f", config, "-db"], port, async () => {
      const served = await stapled(port, ca);
      assertMatch(served, /Cert Status: good/);
      assertEquals(served, await responseText(path.join(crt, "a.test.pem.ocsp")));
    });
  });
});

Deno.test("lighttpd staples ocspbot's file, and a renewal only once on_change reloads it", async (t) => {
  await withCa(async (ca) => {
    const site = path.join(ca.dir, "site");
    const { fullchain } = await issueWithFullchain(ca, site);
    await Deno.mkdir(path.join(site, "www"));
    const response = path.join(site, "responses", "a.test.ocsp-resp");
    const port = freePort();
    const config = path.join(site, "lighttpd.conf");
    await Deno.writeTextFile(
      config,
      `server.document-root = "${site}/www"
server.bind = "127.0.0.1"
server.port = ${port}
server.modules = ("mod_openssl")
server.errorlog = "${site}/error.log"
ssl.engine = "enable"
ssl.pemfile = "${fullchain}"
ssl.privkey = "${path.join(ca.dir, "leaf.key")}"
ssl.stapling-file = "${response}"
`,
    );
    const botConfig = (onChange: string) =>
      Deno.writeTextFile(
        path.join(site, "ocspbot.yaml"),
        `minimum_validity: 6h\nocsp_folder: responses\nserve: 127.0.0.1:${port}\n${onChange}` +
          "scan_keys:\n  - folder: certs\n",
      );
    await botConfig("");
    assertEquals((await runBot(site)).code, 1);
    const server = new Deno.Command("lighttpd", {
      args: ["-D", "-f", config],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      const first = await waitFor(10, () => stapled(port, ca), (text) => text !== "");
      await t.step("the file it started with is stapled", async () => {
        assertMatch(first, /Cert Status: good/);
        assertEquals(first, await responseText(response));
      });
      await t.step("a renewed file alone is not served", async () => {
        await nextSecond();
        assertEquals((await runBot(site, ["--force"])).code, 1);
        await new Promise((resolve) => setTimeout(resolve, 2000));
        assertEquals(await stapled(port, ca), first, "lighttpd reloads the file by itself now");
        const check = await runBot(site, ["--check"]);
        assertEquals(check.code, 1, check.stdout + check.stderr);
        assertMatch(check.stdout, /served: .* not reloaded since .*: WARNING$/m);
      });
      await t.step(
        "after on_change reloads lighttpd (SIGUSR1), the renewal is served",
        async () => {
          await botConfig(`on_change: [kill, "-USR1", "${server.pid}"]\n`);
          await nextSecond();
          const run = await runBot(site, ["--force"]);
          assertEquals(run.code, 1, run.stdout + run.stderr);
          const renewed = await responseText(response);
          const served = await waitFor(10, () => stapled(port, ca), (text) => text === renewed);
          assertEquals(thisUpdate(served), thisUpdate(renewed));
          const check = await runBot(site, ["--check"]);
          assertEquals(check.code, 0, check.stdout + check.stderr);
          assertMatch(check.stdout, /served: .* staples the stored response, or a newer one: OK$/m);
        },
      );
    } finally {
      server.kill("SIGTERM");
      await server.status;
    }
  });
});
