// Copyright 2026 the ocspbot authors. MIT license.

/**
 * The documentation as a reader meets it: README.md and docs/*.md link to
 * one another by file and heading, and the README stays short enough to
 * read at a desk. Run with `deno task test`.
 *
 * @module
 */

import * as path from "node:path";
import { assertEquals } from "./asserts.ts";
import { readmeFiles } from "./readme.ts";

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
