// Copyright 2026 the ocspbot authors. MIT license.

/**
 * `deno task demo`: a throwaway CA and local responder, a config, and two
 * runs of the bot: the first fetches every response, the second finds
 * nothing due. Everything is removed at the end.
 *
 * @module
 */

import * as path from "node:path";
import { TestCa } from "./testca.ts";

const BOT = path.join(import.meta.dirname!, "..", "ocspbot.ts");

const CONFIG = `# What a real config looks like; see README.md for every key.
minimum_validity: 6h
minimum_validity_percentage: 42.8
ocsp_folder: responses
parallel_threads: 4
make_backups: yes
scan_keys:
  - folder: certs
`;

async function runBot(site: string): Promise<number> {
  const { code } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", "--allow-read", "--allow-write", "--allow-run", "--allow-env", BOT],
    cwd: site,
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn().status;
  return code;
}

const ca = await TestCa.create();
try {
  const site = path.join(ca.dir, "site");
  for (const name of ["www.example.test", "mail.example.test", "shop.example.test"]) {
    await ca.issueLeaf(path.join(site, "certs"), name);
  }
  await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), CONFIG);
  console.log(`Test CA in ${ca.dir}, responder at ${ca.url}`);
  console.log(`ocspbot.yaml:\n${CONFIG}`);

  console.log("$ ocspbot            # first run: every response is fetched");
  console.log(`(exit status ${await runBot(site)}: the number of responses renewed)\n`);
  console.log("$ ocspbot            # an hour later, from cron: nothing is due");
  console.log(`(exit status ${await runBot(site)}: nothing renewed)\n`);

  const files = [...Deno.readDirSync(path.join(site, "responses"))].map((e) => e.name).sort();
  console.log(`responses/: ${files.join("  ")}`);
} finally {
  await ca.close();
  console.log("Removed the test CA and its files.");
}
