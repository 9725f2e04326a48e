// Copyright 2026 the ocspbot authors. MIT license.

/**
 * The documentation as a reader meets it: README.md and docs/*.md link to
 * one another by file and heading, the README stays short enough to read
 * at a desk, and its Quick start works as pasted. Run with `deno task test`.
 *
 * @module
 */

import * as path from "node:path";
import { assert, assertEquals } from "./asserts.ts";
import { installBot, movedUnder, readmeBlocks, readmeFiles, readmeRecipe } from "./readme.ts";
import { exists, type TestCa, withCa, writeWithFolders } from "./testca.ts";

/**
 * GitHub's anchor for a heading's text: lower case, inline code's backticks
 * and every other punctuation mark but `-` and `_` dropped, each space a `-`.
 */
function slug(heading: string): string {
  return heading.trim().toLowerCase().replace(/[^\p{L}\p{N}\p{M} _-]/gu, "").replace(/ /g, "-");
}

/** `text` with fenced blocks and inline code blanked, line numbers kept. */
function prose(text: string): string {
  let fence: string | undefined;
  return text.split("\n").map((line) => {
    const opening = /^\s*(`{3,}|~{3,})/.exec(line)?.[1];
    if (fence !== undefined) {
      if (opening?.[0] === fence[0] && opening.length >= fence.length) fence = undefined;
      return "";
    }
    if (opening !== undefined) {
      fence = opening;
      return "";
    }
    return line.replace(/`[^`]*`/g, "``");
  }).join("\n");
}

/** The anchors of `text`'s headings, a repeated one numbered as GitHub does (`-1`, `-2`). */
function anchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const found = new Set<string>();
  let fence: string | undefined;
  for (const line of text.split("\n")) {
    const opening = /^\s*(`{3,}|~{3,})/.exec(line)?.[1];
    if (fence !== undefined) {
      if (opening?.[0] === fence[0] && opening.length >= fence.length) fence = undefined;
      continue;
    }
    if (opening !== undefined) {
      fence = opening;
      continue;
    }
    const heading = /^#{1,6} (.*?)#*\s*$/.exec(line)?.[1];
    if (heading === undefined) continue;
    const base = slug(heading);
    const times = seen.get(base) ?? 0;
    seen.set(base, times + 1);
    found.add(times === 0 ? base : `${base}-${times}`);
  }
  return found;
}

/** Every link of `text` that is not to another site: its target and its line. */
function relativeLinks(text: string): { target: string; line: number }[] {
  const links: { target: string; line: number }[] = [];
  prose(text).split("\n").forEach((line, index) => {
    for (const match of line.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (!/^[a-z][a-z+.-]*:/i.test(match[1])) links.push({ target: match[1], line: index + 1 });
    }
  });
  return links;
}

/** What is wrong with each link of the documentation that stays in this repository. */
async function brokenLinks(files: Map<string, string>): Promise<string[]> {
  const root = path.join(import.meta.dirname!, "..");
  const problems: string[] = [];
  for (const [file, text] of files) {
    for (const { target, line } of relativeLinks(text)) {
      const where = `${file}:${line}: ${target}`;
      const [page, fragment] = target.split("#", 2);
      const linked = page === "" ? file : path.normalize(path.join(path.dirname(file), page));
      let linkedText = files.get(linked);
      if (linkedText === undefined) {
        try {
          linkedText = await Deno.readTextFile(path.join(root, linked));
        } catch {
          problems.push(`${where}: no file ${linked}`);
          continue;
        }
      }
      if (fragment === undefined) continue;
      if (!linked.endsWith(".md")) problems.push(`${where}: a heading in a file that has none`);
      else if (!anchors(linkedText).has(fragment)) problems.push(`${where}: no such heading`);
    }
  }
  return problems;
}

Deno.test("slug() gives GitHub's anchors", () => {
  assertEquals(slug("Monitoring with `--check`"), "monitoring-with---check");
  assertEquals(slug("Keys of each `scan_keys` entry"), "keys-of-each-scan_keys-entry");
  assertEquals(slug("Reloads, retention, retries, proxies"), "reloads-retention-retries-proxies");
  assertEquals(slug("The Python bot's three files"), "the-python-bots-three-files");
  assertEquals(
    slug("Against the version before: `--baseline`"),
    "against-the-version-before---baseline",
  );
});

Deno.test("every link between README.md and docs/*.md reaches its file and its heading", async (t) => {
  const files = await readmeFiles();
  await t.step("as the documentation stands", async () => {
    assertEquals(await brokenLinks(files), []);
  });
  await t.step("a heading that is gone, and a file that is gone, are named", async () => {
    const broken = new Map(files);
    broken.set(
      "README.md",
      `${files.get("README.md")}\nSee [gone](#no-such-heading) and [moved](docs/gone.md).\n`,
    );
    const lines = broken.get("README.md")!.split("\n").length - 1;
    assertEquals(await brokenLinks(broken), [
      `README.md:${lines}: #no-such-heading: no such heading`,
      `README.md:${lines}: docs/gone.md: no file docs/gone.md`,
    ]);
  });
});

/** The README's block `name`, failing on one it lacks. */
async function block(name: string): Promise<string> {
  const text = (await readmeBlocks()).get(name);
  assert(text !== undefined, `README.md and docs/*.md have no <!-- test: ${name} -->`);
  return text;
}

/**
 * A machine under `ca.dir` as certbot leaves it, for the Quick start: a
 * certificate of the test CA, whose root no trust store holds, in
 * live/www.example.com, that root in the private CA block's file, and the
 * command the Quick start installs. `rootchainMask` replaces the certbot
 * recipe's own line.
 */
async function quickStartMachine(ca: TestCa, rootchainMask?: string): Promise<string> {
  const root = path.join(ca.dir, "machines", crypto.randomUUID());
  const leaf = await ca.issueLeaf(path.join(ca.dir, "issued"), "www.example.com");
  const live = path.join(root, "etc/letsencrypt/live/www.example.com");
  await writeWithFolders(path.join(live, "cert.pem"), await Deno.readTextFile(leaf.cert));
  await Deno.copyFile(ca.chain, path.join(live, "chain.pem"));
  const rootFile = /^ *rootchain_mask: (\S+)/m.exec(await block("private ca"))![1];
  await writeWithFolders(
    movedUnder(rootFile, root),
    await Deno.readTextFile(path.join(ca.dir, "root.pem")),
  );
  let config = await readmeRecipe("certbot", root);
  if (rootchainMask !== undefined) {
    config = config.replace(/^ *rootchain_mask: .*$/m, movedUnder(rootchainMask, root));
  }
  await writeWithFolders(path.join(root, "etc/ocspbot/ocspbot.yaml"), config);
  await installBot(root);
  return root;
}

/**
 * Runs `command` with `sh -c` from a clear environment but `PATH`, as cron
 * does; under CI's faketime guard its clock stays the test's (libfaketime's
 * variables are kept), as the CA that signs the responses runs on it.
 */
async function asCron(command: string, PATH: string) {
  const clock = Object.fromEntries(
    Object.entries(Deno.env.toObject()).filter(([name]) =>
      name === "LD_PRELOAD" || name.startsWith("FAKETIME")
    ),
  );
  const output = await new Deno.Command("/bin/sh", {
    args: ["-c", command],
    clearEnv: true,
    env: { ...clock, PATH, HOME: "/" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    printed: decoder.decode(output.stdout) + decoder.decode(output.stderr),
  };
}

Deno.test("the Quick start as pasted: a private CA's root named once, and a crontab that mails nothing", async (t) => {
  const cron = await block("cron");
  const PATH = /^PATH=(.*)$/m.exec(cron)?.[1];
  assert(PATH !== undefined, "the crontab sets no PATH");
  const command = /^[\d*/,-]+ [\d*/,-]+ [\d*/,-]+ [\d*/,-]+ [\d*/,-]+ (.*)$/m.exec(cron)?.[1];
  assert(command !== undefined, "the crontab has no entry");
  const privateCa = (await block("private ca")).split("\n")
    .find((line) => /^ *rootchain_mask:/.test(line));
  assert(privateCa !== undefined, "the private CA block names no rootchain_mask");

  await t.step("the PATH finds what on_change runs: systemctl, and a server in /usr/sbin", () => {
    for (const folder of ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]) {
      assert(PATH.split(":").includes(folder), `cron's PATH lacks ${folder}`);
    }
  });
  await withCa(async (ca) => {
    await t.step("without the root, nothing verifies", async () => {
      const root = await quickStartMachine(ca);
      const run = await asCron(movedUnder(command, root), PATH);
      assertEquals(run.code, 255, run.printed);
    });
    await t.step("with it, cron renews and reloads, and mails nothing", async () => {
      const root = await quickStartMachine(ca, privateCa);
      const first = await asCron(movedUnder(command, root), PATH);
      assertEquals([first.code, first.printed], [1, ""]);
      assert(await exists(path.join(root, "reloaded-nginx")), "on_change did not run");
      const response = path.join(root, "var/lib/ocspbot/www.example.com.der");
      assertEquals(
        await ca.verifiedStatus(
          response,
          path.join(root, "etc/letsencrypt/live/www.example.com/cert.pem"),
        ),
        "good",
      );
      const second = await asCron(movedUnder(command, root), PATH);
      assertEquals([second.code, second.printed], [0, ""]);
    });
  });
});

Deno.test("README.md fits on a desk: 600 lines at most, as wc -l counts them", async () => {
  const readme = (await readmeFiles()).get("README.md")!;
  const lines = readme.split("\n").length - 1;
  assert(
    lines <= 600,
    `README.md has ${lines} lines: move reference to docs/*.md and link it, or say a fact once`,
  );
});
