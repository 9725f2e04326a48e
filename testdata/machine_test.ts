// Copyright 2026 the ocspbot authors. MIT license.

/**
 * ocspbot on a real machine: a full filesystem (a 64 KiB tmpfs), another
 * user (setpriv), a folder it may not write, a lock file left by root. The
 * promise under test: the response a server staples is never replaced by
 * anything worse, and every failure is one line naming the path. Needs root,
 * to mount and to become `nobody`, as CI has; `deno task test:machine`.
 *
 * @module
 */

import nodeAssert from "node:assert/strict";
import * as path from "node:path";
import { BASE_CONFIG, BOT, makeSite, response, runBot, type TestCa, withCa } from "./testca.ts";

const assert: (condition: unknown, message?: string) => asserts condition = nodeAssert.ok;
const assertEquals = (actual: unknown, expected: unknown, message?: string) =>
  nodeAssert.deepStrictEqual(actual, expected, message);
const assertMatch = (actual: string, expected: RegExp, message?: string) =>
  nodeAssert.match(actual, expected, message);
const decoder = new TextDecoder();

/** Runs a program that must succeed; returns its stdout. */
async function run(program: string, args: string[]): Promise<string> {
  const output = await new Deno.Command(program, { args, stdin: "null" }).output();
  if (!output.success) {
    throw new Error(`${program} ${args.join(" ")}: ${decoder.decode(output.stderr)}`);
  }
  return decoder.decode(output.stdout);
}

/** A `size` tmpfs mounted on `folder` for the length of `fn`. */
async function withTmpfs(folder: string, size: string, fn: () => Promise<void>): Promise<void> {
  await Deno.mkdir(folder, { recursive: true });
  await run("mount", ["-t", "tmpfs", "-o", `size=${size},mode=0755`, "tmpfs", folder]);
  try {
    await fn();
  } finally {
    await run("umount", [folder]);
  }
}

/** Writes zeros into `file` until the filesystem says it is full. */
async function fillUp(file: string): Promise<void> {
  const handle = await Deno.open(file, { write: true, create: true });
  try {
    const block = new Uint8Array(1024);
    for (;;) await handle.write(block);
  } catch (error) {
    if (!/No space left on device/.test(String(error))) throw error;
  } finally {
    handle.close();
  }
}

/** Everything in a folder, hidden files too, sorted. */
function listing(folder: string): string[] {
  return [...Deno.readDirSync(folder)].map((entry) => entry.name).sort();
}

/**
 * Runs the bot as `nobody`, in the groups given (none: --clear-groups), the
 * way cron runs it for an unprivileged user. Deno and its module cache are
 * copied where that user can read them: the test runner's may sit under
 * root's home.
 */
class OtherUser {
  private constructor(readonly dir: string) {}

  static async create(): Promise<OtherUser> {
    const dir = await Deno.makeTempDir({ prefix: "ocspbot-user-" });
    const user = new OtherUser(dir);
    try {
      await Deno.chmod(dir, 0o755);
      await Deno.copyFile(Deno.execPath(), user.deno);
      await Deno.copyFile(BOT, user.script);
      const info = JSON.parse(await run(Deno.execPath(), ["info", "--json"]));
      await Deno.mkdir(path.join(dir, "cache"));
      await run("cp", ["-r", path.join(info.denoDir, "npm"), path.join(dir, "cache", "npm")]);
      await run("chmod", ["-R", "a+rwX", path.join(dir, "cache")]);
    } catch (error) {
      await user.close();
      throw error;
    }
    return user;
  }

  get deno(): string {
    return path.join(this.dir, "deno");
  }

  get script(): string {
    return path.join(this.dir, "ocspbot.ts");
  }

  async runBot(cwd: string, args: string[], groups: string[], env: Record<string, string> = {}) {
    const output = await new Deno.Command("setpriv", {
      args: [
        "--reuid=nobody",
        "--regid=nogroup",
        ...(groups.length > 0 ? [`--groups=${groups.join(",")}`] : ["--clear-groups"]),
        this.deno,
        "run",
        "--quiet",
        "--cached-only",
        "--allow-read",
        "--allow-write",
        "--allow-run",
        "--allow-env",
        this.script,
        ...args,
      ],
      cwd,
      env: { NO_COLOR: "1", DENO_DIR: path.join(this.dir, "cache"), HOME: this.dir, ...env },
      stdin: "null",
    }).output();
    return {
      code: output.code,
      stdout: decoder.decode(output.stdout),
      stderr: decoder.decode(output.stderr),
    };
  }

  async close(): Promise<void> {
    await Deno.remove(this.dir, { recursive: true });
  }
}

/** A site the CA's temp folder would hide from other users, opened up to them. */
async function openSite(ca: TestCa, names: string[], config: string): Promise<string> {
  const site = await makeSite(ca, names, config);
  await run("chmod", ["-R", "a+rX", ca.dir]);
  return site;
}

Deno.test("before anything else: these tests run as root", async () => {
  const uid = (await run("id", ["-u"])).trim();
  assertEquals(uid, "0", "mount and setpriv need root: run deno task test:machine as root");
});

Deno.test("a full disk: the stored response stays byte for byte, the error names the folder", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    const folder = path.join(site, "responses");
    await withTmpfs(folder, "64k", async () => {
      assertEquals((await runBot(site)).code, 1);
      const good = await Deno.readFile(response(site, "a.test"));
      const state = await Deno.readFile(path.join(folder, ".ocspbot-state.json"));
      await fillUp(path.join(folder, "filler"));
      const before = listing(folder);

      await t.step("the response is not replaced", async () => {
        const forced = await runBot(site, ["--force"]);
        assertEquals(forced.code, 255, forced.stdout + forced.stderr);
        assertMatch(
          forced.stderr,
          new RegExp(
            `^\\[a\\.test\\] ERROR: Cannot write "a\\.test\\.ocsp-resp" in folder "${folder}": No space left on device; the stored response stays as it was$`,
            "m",
          ),
        );
        assert(!/Stored new OCSP response/.test(forced.stdout), forced.stdout);
        assertEquals(await Deno.readFile(response(site, "a.test")), good);
        assertEquals(listing(folder), before, "a temporary file was left behind");
        assertEquals(
          await Deno.readFile(path.join(folder, ".ocspbot-state.json")),
          state,
          "the state changed",
        );
      });

      await t.step("the backup is not half written, and stops the renewal", async () => {
        await Deno.writeTextFile(
          path.join(site, "ocspbot.yaml"),
          BASE_CONFIG + "make_backups: true\n",
        );
        const forced = await runBot(site, ["--force"]);
        assertEquals(forced.code, 255, forced.stdout + forced.stderr);
        assertMatch(
          forced.stderr,
          /ERROR: Cannot write "a\.test\.ocsp-resp-\d{8}-\d{6}" in folder ".*": No space left on device; the stored response stays as it was/,
        );
        assertEquals(await Deno.readFile(response(site, "a.test")), good);
        assertEquals(listing(folder), before, "a backup or temporary file was left behind");
      });

      await t.step("--check still finds the stored response fresh", async () => {
        const check = await runBot(site, ["--check"]);
        assertEquals(check.code, 0, check.stdout + check.stderr);
      });

      await t.step("with room again, the next run renews and records it", async () => {
        await Deno.remove(path.join(folder, "filler"));
        const forced = await runBot(site, ["--force"]);
        assertEquals(forced.code, 1, forced.stderr);
        const renewed = await Deno.readFile(response(site, "a.test"));
        nodeAssert.notDeepStrictEqual(renewed, good);
        const check = await runBot(site, ["--check"]);
        assertEquals(check.code, 0, check.stdout + check.stderr);
      });
    });
  });
});

Deno.test("as a user who may write the folder: the group is kept, a lost owner is named", async (t) => {
  await withCa(async (ca) => {
    const user = await OtherUser.create();
    try {
      const site = await openSite(ca, ["a.test"], BASE_CONFIG);
      const folder = path.join(site, "responses");
      const file = response(site, "a.test");
      // An earlier run as root left the response, the state and the lock file.
      assertEquals((await runBot(site)).code, 1);
      await Deno.chown(folder, 65534, 65534);
      const handOver = async (mode: number) => {
        await Deno.chown(file, 0, 33);
        await Deno.chmod(file, mode);
      };

      await t.step("in the file's group: the group and mode stay", async () => {
        await handOver(0o640);
        const renewed = await user.runBot(site, ["--force"], ["www-data"]);
        assertEquals(renewed.code, 1, renewed.stdout + renewed.stderr);
        const info = await Deno.stat(file);
        assertEquals([info.uid, info.gid, info.mode! & 0o7777], [65534, 33, 0o640]);
        assertMatch(
          renewed.stderr,
          new RegExp(
            `^\\[a\\.test\\] WARNING: Cannot keep the owner \\(uid 0\\) of "${file}": the new file has uid 65534, gid 33;`,
            "m",
          ),
        );
        assert(!/group \(gid 33\)/.test(renewed.stderr), renewed.stderr);
      });

      await t.step("outside it: a warning names the group too", async () => {
        await handOver(0o644);
        const renewed = await user.runBot(site, ["--force"], []);
        assertEquals(renewed.code, 1, renewed.stdout + renewed.stderr);
        const info = await Deno.stat(file);
        assertEquals([info.gid, info.mode! & 0o7777], [65534, 0o644]);
        assertMatch(renewed.stderr, /Cannot keep the owner \(uid 0\) and group \(gid 33\) of "/);
      });

      await t.step("root's lock file needed only read access", async () => {
        const lock = await Deno.stat(path.join(folder, ".ocspbot-state.json.lock"));
        assertEquals(lock.uid, 0, "the test meant a lock file left by root");
      });
    } finally {
      await user.close();
    }
  });
});

Deno.test("a response folder the user may not write: one line naming it, no stack trace", async () => {
  await withCa(async (ca) => {
    const user = await OtherUser.create();
    try {
      const site = await openSite(ca, ["a.test"], BASE_CONFIG);
      const folder = path.join(site, "responses");
      assertEquals((await runBot(site)).code, 1);
      const good = await Deno.readFile(response(site, "a.test"));
      const forced = await user.runBot(site, ["--force"], []);
      assertEquals(forced.code, 255, forced.stdout + forced.stderr);
      assertMatch(
        forced.stderr,
        new RegExp(
          `^\\[a\\.test\\] ERROR: Cannot write "a\\.test\\.ocsp-resp" in folder "${folder}": Permission denied; the stored response stays as it was$`,
          "m",
        ),
      );
      assert(!/^\s+at /m.test(forced.stderr), `a stack trace reached the user:\n${forced.stderr}`);
      assert(!/Unexpected failure/.test(forced.stderr), forced.stderr);
      assertEquals(await Deno.readFile(response(site, "a.test")), good);
    } finally {
      await user.close();
    }
  });
});

Deno.test("a scan folder the user may not read: one line naming it, status 253", async () => {
  await withCa(async (ca) => {
    const user = await OtherUser.create();
    try {
      const site = await openSite(ca, ["a.test"], BASE_CONFIG);
      const certs = path.join(site, "certs");
      await Deno.chmod(certs, 0o700);
      await Deno.mkdir(path.join(site, "responses"));
      await Deno.chmod(path.join(site, "responses"), 0o777);
      const run = await user.runBot(site, [], []);
      assertEquals(run.code, 253, run.stdout + run.stderr);
      assertMatch(
        run.stderr,
        new RegExp(
          `^ERROR: Cannot scan scan_keys folder "certs" of config ".*": cannot list "${certs}": Permission denied; let the user running ocspbot read it$`,
          "m",
        ),
      );
    } finally {
      await user.close();
    }
  });
});
