// Copyright 2026 the ocspbot authors. MIT license.

import nodeAssert from "node:assert/strict";
import * as nodeCrypto from "node:crypto";
import { X509Certificate } from "node:crypto";
import * as path from "node:path";
import { assert, assertEquals, assertMatch, assertNotEquals } from "./testdata/asserts.ts";
import {
  assess,
  type Attempt,
  type CertificateInfo,
  certificateInfo,
  checkSummary,
  configKeys,
  derLength,
  EXIT,
  ExitError,
  exitStatus,
  fileEntry,
  fileStamp,
  formatLogName,
  haproxyAddress,
  type Health,
  interpretConfig,
  jsonReport,
  maskPattern,
  metricsText,
  nextAttempt,
  type Outcome,
  parseCommandLine,
  parseInterval,
  parseOcspOutput,
  parseOpensslTime,
  parseStapled,
  parseStateLine,
  type Place,
  type Plan,
  planRenewal,
  planTarget,
  printable,
  recallReport,
  recordOf,
  rejectedPath,
  rejectFetched,
  responseContents,
  type ResponseReport,
  runPool,
  type ServeAddress,
  serveAddress,
  servedVerdict,
  STATE_VERSION,
  summaryLine,
  unchangedEntry,
  VERSION,
} from "./ocspbot.ts";
import {
  BASE_CONFIG,
  BOT,
  BOT_PERMISSIONS,
  exists,
  type ForgedAnswer,
  makeSite,
  openssl,
  realClockAhead,
  response,
  runBot,
  runBotRedirected,
  runMain,
  TestCa,
  withCa,
  withTempDir,
  writeWithFolders,
} from "./testdata/testca.ts";
import { installBot, readmeFiles, readmeHook, readmeRecipe } from "./testdata/readme.ts";
import { type FloorLayout, readState } from "./testdata/bench_floor.ts";

const HOUR = 3600_000;
const FLOOR_SCRIPT = path.join(import.meta.dirname!, "testdata", "bench_floor.ts");
const decoder = new TextDecoder();

// ------------------------------------------------------------- helpers --

// JSR's @std/assert cannot be reached here; node:assert says the same things.

/** Runs `fn`, expecting it to throw an `ErrorClass`, and returns the error. */
function assertThrows<E extends Error>(
  fn: () => unknown,
  ErrorClass: abstract new (...args: never[]) => E = Error as never,
): E {
  try {
    fn();
  } catch (error) {
    assert(error instanceof ErrorClass, `expected ${ErrorClass.name}, got ${error}`);
    return error;
  }
  throw new nodeAssert.AssertionError({ message: "expected an exception" });
}

/**
 * Waits for the next whole second of the real clock (under a second): a
 * file changed after it has another ctime second than one changed before,
 * which is all a file's stamp needs to tell them apart when the bot's clock
 * is ahead (realClockAhead()) and every file counts as settled at once.
 */
function nextWholeSecond(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 1005 - (Date.now() % 1000)));
}

/** The bot's real clock past the 2 s a file's stamp waits for (STAMP_SETTLE_MS). */
const SETTLED = realClockAhead(2100);

function fakeNow(offsetMs: number): Record<string, string> {
  return { OCSPBOT_FAKE_NOW: new Date(Date.now() + offsetMs).toISOString() };
}

/** stderr without the warning every run on a fake clock starts with. */
function withoutFakeClock(stderr: string): string {
  return stderr.replace(/^WARNING: OCSPBOT_FAKE_NOW is set: .*\n/m, "");
}

/**
 * A fake clock for runs that talk to the responder: the real time plus
 * `offsetMs`, in whole seconds (as file names show it). The responder signs
 * on the real clock, so a fixed date would reject its answers a day later.
 */
function clockAhead(offsetMs: number): Date {
  return new Date(Math.floor((Date.now() + offsetMs) / 1000) * 1000);
}

/** `YYYYMMDD-HHMMSS` of `time` on a wall clock `utcOffsetHours` ahead of UTC. */
function wallClockStamp(time: Date, utcOffsetHours = 0): string {
  const local = new Date(time.getTime() + utcOffsetHours * HOUR).toISOString();
  return local.slice(0, 10).replaceAll("-", "") + "-" + local.slice(11, 19).replaceAll(":", "");
}

/** A certificate's serial, as the test CA's index names it. */
async function serialOf(cert: string): Promise<string> {
  const printed = decoder.decode(await openssl(["x509", "-in", cert, "-noout", "-serial"]));
  return printed.trim().replace("serial=", "");
}

/** The openssl processes that name `url` on their command line, as `ps` lists them. */
async function opensslAsking(url: string): Promise<string[]> {
  const listing = await new Deno.Command("ps", { args: ["-eo", "pid=,args="], stdin: "null" })
    .output();
  return decoder.decode(listing.stdout).split("\n")
    .filter((line) => /^\s*\d+ \S*openssl /.test(line) && line.includes(url));
}

// ---------------------------------------------------- pure: unit tests --

Deno.test("deno.json's version is VERSION", async () => {
  const manifest = JSON.parse(
    await Deno.readTextFile(path.join(import.meta.dirname!, "deno.json")),
  );
  assertEquals(manifest.version, VERSION);
});

Deno.test("parseCommandLine() reads the Python bot's arguments", async (t) => {
  const cases: [string[], Partial<ReturnType<typeof parseCommandLine>>][] = [
    [[], { configPath: "ocspbot.yaml", help: false, version: false }],
    [["site.yaml"], { configPath: "site.yaml" }],
    [["-h"], { help: true }],
    [["-help"], { help: true }],
    [["a.yaml", "--help"], { help: true }],
    [["-v"], { version: true }],
    [["-version", "a.yaml"], { version: true }],
    [["a", "b", "--version"], { version: true }],
    [["--force", "site.yaml"], { configPath: "site.yaml", force: true, only: [] }],
    [["site.yaml", "--force"], { configPath: "site.yaml", force: true }],
    [["--only", "www", "--force", "site.yaml"], { configPath: "site.yaml", only: ["www"] }],
    [["--only=www", "--only", "mail"], { configPath: "ocspbot.yaml", only: ["www", "mail"] }],
  ];
  for (const [args, expected] of cases) {
    await t.step(JSON.stringify(args), () => {
      const invocation = parseCommandLine(args);
      for (const [key, value] of Object.entries(expected)) {
        assertEquals(invocation[key as keyof typeof invocation], value);
      }
    });
  }
  await t.step("two configs are status 252", () => {
    const error = assertThrows(() => parseCommandLine(["a", "b"]), ExitError);
    assertEquals(error.status, 252);
  });
  await t.step("an unknown option is status 252", () => {
    const error = assertThrows(() => parseCommandLine(["--frobnicate"]), ExitError);
    assertEquals(error.status, 252);
  });
  await t.step("--only without an id is status 252", () => {
    for (const args of [["--only"], ["--only", "--force"]]) {
      const error = assertThrows(() => parseCommandLine(args), ExitError);
      assertEquals([error.status, error.message], [252, "--only needs a certificate id"]);
    }
  });
});

Deno.test("parseInterval() reads every token form", async (t) => {
  const cases: [string, number][] = [
    ["3d", 3 * 86400],
    ["2 hours 5 minutes 10 seconds", 2 * 3600 + 5 * 60 + 10],
    ["1w 3d 5h", 7 * 86400 + 3 * 86400 + 5 * 3600],
    ["1 week", 604800],
    ["10 s 1 sec 1 second", 12],
    ["1m 1 min 1 minute 2 minutes", 5 * 60],
    ["1h 1 hour 2 hours", 4 * 3600],
    ["1d 1 day 2 days", 4 * 86400],
    ["1w 1 weeks", 2 * 604800],
    ["1h30m", 5400],
  ];
  for (const [text, seconds] of cases) {
    await t.step(text, () => assertEquals(parseInterval(text), seconds * 1000));
  }
});

Deno.test("parseInterval() rejects what it cannot read", async (t) => {
  for (const text of ["", "  ", "3", "d", "3 fortnights", "1.5h", "-3d", "3d and more"]) {
    await t.step(JSON.stringify(text), () => {
      assertThrows(() => parseInterval(text), Error);
    });
  }
});

Deno.test("interpretConfig() names the file and key of every error", async (t) => {
  const cases: [string, unknown, RegExp][] = [
    ["empty file", null, /"c.yaml" is empty/],
    ["no validity key", { ocsp_folder: "x" }, /"minimum_validity" is missing/],
    ["bad interval", { minimum_validity: "3 lightyears" }, /"minimum_validity".*lightyears/],
    ["interval not a string", { minimum_validity: 3 }, /"minimum_validity" must be a string/],
    ["percentage over 100", { minimum_validity_percentage: 101 }, /between 0 and 100/],
    ["percentage below 0", { minimum_validity_percentage: -1 }, /between 0 and 100/],
    ["percentage as text", { minimum_validity_percentage: "42" }, /must be a number/],
    ["threads 0", { minimum_validity: "1d", parallel_threads: 0 }, /"parallel_threads"/],
    ["threads negative", { minimum_validity: "1d", parallel_threads: -2 }, /"parallel_threads"/],
    ["threads fractional", { minimum_validity: "1d", parallel_threads: 2.5 }, /"parallel_threads"/],
    [
      "boolean as text",
      { minimum_validity: "1d", make_backups: "maybe" },
      /"make_backups" must be true or false/,
    ],
    ["timeout 0", { minimum_validity: "1d", timeout: 0 }, /"timeout"/],
    ["domains a list", { minimum_validity: "1d", domains: [] }, /"domains" must be a mapping/],
    [
      "domain without ocsp",
      { minimum_validity: "1d", domains: { "a.test": { cert: "a", chain: "b" } } },
      /"domains.a.test.ocsp" is missing/,
    ],
    [
      "cert_mask with a folder but no {domain} in it",
      { minimum_validity: "1d", scan_keys: [{ cert_mask: "live/{domain}.pem" }] },
      /"scan_keys\[0\].cert_mask" has a folder without "\{domain\}"/,
    ],
    [
      "domain with bad responder URI",
      {
        minimum_validity: "1d",
        domains: {
          a: { cert: "a", chain: "b", rootchain: "c", ocsp: "d", ocsp_responder_uri: "ldap://x" },
        },
      },
      /"domains.a.ocsp_responder_uri"/,
    ],
    [
      "scan_keys a mapping",
      { minimum_validity: "1d", scan_keys: {} },
      /"scan_keys" must be a list/,
    ],
    [
      "cert mask without {domain}",
      { minimum_validity: "1d", scan_keys: [{ cert_mask: "cert.pem" }] },
      /"scan_keys\[0\].cert_mask" must contain "\{domain\}"/,
    ],
    [
      "recursive as text",
      { minimum_validity: "1d", scan_keys: [{ recursive: "deep" }] },
      /"scan_keys\[0\].recursive"/,
    ],
    ["include not a string", { minimum_validity: "1d", includes: [3] }, /"includes\[0\]"/],
  ];
  for (const [name, document, message] of cases) {
    await t.step(name, () => {
      const error = assertThrows(() => interpretConfig(document, "c.yaml"), ExitError);
      assertEquals(error.status, EXIT.configInvalid);
      assertMatch(error.message, /Config "c.yaml"/);
      assertMatch(error.message, message);
    });
  }
});

Deno.test("interpretConfig() warns about an unknown key and guesses the meant one", () => {
  const warnings: string[] = [];
  interpretConfig({ minimum_validity: "1d", minimum_validty: "3d" }, "c.yaml", warnings);
  assertEquals(warnings.length, 1);
  assertMatch(warnings[0], /unknown key "minimum_validty".*did you mean "minimum_validity"/);
});

Deno.test("interpretConfig() fills the Python bot's defaults", () => {
  const config = interpretConfig(
    {
      minimum_validity_percentage: 42.8,
      domains: { a: { cert: "a", chain: "b", rootchain: "c", ocsp: "d" } },
    },
    "c.yaml",
  );
  assertEquals(config.parallelThreads, 1);
  assertEquals(config.stopOnError, false);
  assertEquals(config.makeBackups, false);
  assertEquals(config.opensslExecutable, "openssl");
  assertEquals(config.ocspFolder, "");
  assertEquals(config.policy, { minimumValidityPercentage: 42.8 });
  assertEquals(config.domains[0].responderUri, undefined);
});

Deno.test("maskPattern() matches whole file names only", async (t) => {
  const cases: [string, string, string | undefined][] = [
    ["{domain}.pem", "example.com.pem", "example.com"],
    ["{domain}.pem", "example.com.pem.bak", undefined],
    ["{domain}.pem", "x.example.com.pem", "x.example.com"],
    ["cert-{domain}.crt", "cert-a.test.crt", "a.test"],
    ["cert-{domain}.crt", "cert-a.test.crt~", undefined],
    ["{domain}/{domain}.pem", "a/a.pem", "a"],
  ];
  for (const [mask, name, domain] of cases) {
    await t.step(
      `${mask} ~ ${name}`,
      () => assertEquals(maskPattern(mask).exec(name)?.[1], domain),
    );
  }
});

Deno.test("parseOpensslTime() reads GMT times whatever the time zone", () => {
  assertEquals(
    parseOpensslTime("Nov 24 01:55:18 2026 GMT").toISOString(),
    "2026-11-24T01:55:18.000Z",
  );
  assertEquals(
    parseOpensslTime("Mar  4 23:00:00 2027 GMT").toISOString(),
    "2027-03-04T23:00:00.000Z",
  );
  assertThrows(() => parseOpensslTime("Foo 4 23:00:00 2027 GMT"));
});

Deno.test("parseOcspOutput() reads openssl's status block", async (t) => {
  await t.step("good and verified", () => {
    const report = parseOcspOutput(
      "a.pem: good\n\tThis Update: Nov 24 01:55:18 2026 GMT\n\tNext Update: Nov 25 01:55:18 2026 GMT\n",
      "Response verify OK\n",
      0,
    );
    assertEquals(report.status, "good");
    assertEquals(report.verified, true);
    assertEquals(report.thisUpdate?.toISOString(), "2026-11-24T01:55:18.000Z");
    assertEquals(report.nextUpdate?.toISOString(), "2026-11-25T01:55:18.000Z");
  });
  await t.step("revoked, with reason and time", () => {
    const report = parseOcspOutput(
      "a.pem: revoked\n\tThis Update: Nov 24 01:55:18 2026 GMT\n\tReason: keyCompromise\n\tRevocation Time: Nov 24 00:55:18 2026 GMT\n",
      "Response verify OK\n",
      0,
    );
    assertEquals(report.status, "revoked");
    assertEquals(report.nextUpdate, undefined);
    assertEquals(report.revocationReason, "keyCompromise");
    assertEquals(report.revocationTime?.toISOString(), "2026-11-24T00:55:18.000Z");
  });
  await t.step("verify failure explains itself", () => {
    const report = parseOcspOutput(
      "a.pem: good\n\tThis Update: Nov 24 01:55:18 2026 GMT\n",
      "Response Verify Failure\n40A7:error:13800065:OCSP routines:ocsp_verify_signer:certificate verify error:../crypto/ocsp/ocsp_vfy.c:64:Verify error: self-signed certificate\n",
      1,
    );
    assertEquals(report.verified, false);
    assertMatch(
      report.problem!,
      /certificate verify error \(Verify error: self-signed certificate\)/,
    );
  });
  await t.step("responder error", () => {
    const report = parseOcspOutput("Responder Error: unauthorized (6)\n", "", 1);
    assertEquals(report.verified, false);
    assertMatch(report.problem!, /unauthorized/);
  });
});

const CERT: CertificateInfo = {
  notBefore: new Date("2026-01-01T00:00:00Z"),
  notAfter: new Date("2027-01-01T00:00:00Z"),
  ocspUrls: ["http://127.0.0.1/"],
  mustStaple: false,
};
/** A must-staple certificate, else CERT. */
const STAPLED: CertificateInfo = { ...CERT, mustStaple: true };
/** When GOOD is due with a 72 h minimum_validity. */
const JUNE5 = new Date("2026-06-05T00:00:00Z");
const GOOD: ResponseReport = {
  status: "good",
  verified: true,
  thisUpdate: new Date("2026-06-01T00:00:00Z"),
  nextUpdate: new Date("2026-06-08T00:00:00Z"),
};

Deno.test("planRenewal() follows the Python bot's rule, on a fake clock", async (t) => {
  const at = (iso: string) => new Date(iso);
  const cases: [
    string,
    Parameters<typeof planRenewal>[0],
    ResponseReport | undefined,
    string,
    boolean,
  ][] = [
    ["nothing stored", { minimumValidityMs: HOUR }, undefined, "2026-06-01T00:00:00Z", true],
    [
      "not verified",
      { minimumValidityMs: HOUR },
      { ...GOOD, verified: false, problem: "x" },
      "2026-06-01T01:00:00Z",
      true,
    ],
    [
      "revoked",
      { minimumValidityMs: HOUR },
      { ...GOOD, status: "revoked" },
      "2026-06-01T01:00:00Z",
      true,
    ],
    [
      "time: 3d before end, not yet",
      { minimumValidityMs: 72 * HOUR },
      GOOD,
      "2026-06-04T23:59:59Z",
      false,
    ],
    [
      "time: 3d before end, due",
      { minimumValidityMs: 72 * HOUR },
      GOOD,
      "2026-06-05T00:00:00Z",
      true,
    ],
    // 42.8% left of 7 days: due once 57.2% (96.096 h) has elapsed.
    [
      "percent: 42.8, not yet",
      { minimumValidityPercentage: 42.8 },
      GOOD,
      "2026-06-05T00:05:00Z",
      false,
    ],
    ["percent: 42.8, due", { minimumValidityPercentage: 42.8 }, GOOD, "2026-06-05T00:06:00Z", true],
    [
      "both: the earlier wins",
      { minimumValidityMs: HOUR, minimumValidityPercentage: 50 },
      GOOD,
      "2026-06-04T12:00:00Z",
      true,
    ],
    ["expired response", { minimumValidityMs: HOUR }, GOOD, "2026-06-09T00:00:00Z", true],
    [
      "no nextUpdate: 12 h assumed, not yet",
      { minimumValidityMs: HOUR },
      { ...GOOD, nextUpdate: undefined },
      "2026-06-01T10:59:00Z",
      false,
    ],
    [
      "no nextUpdate: 12 h assumed, due",
      { minimumValidityMs: HOUR },
      { ...GOOD, nextUpdate: undefined },
      "2026-06-01T11:00:00Z",
      true,
    ],
  ];
  for (const [name, policy, stored, now, due] of cases) {
    await t.step(name, () => assertEquals(planRenewal(policy, CERT, stored, at(now)).due, due));
  }
  await t.step(
    "a response that outlives the certificate is not due: no newer one could outlive it longer",
    () => {
      const cert = { ...CERT, notAfter: new Date("2026-06-03T00:00:00Z") };
      const decision = planRenewal(
        { minimumValidityMs: 24 * HOUR },
        cert,
        GOOD,
        at("2026-06-02T00:00:00Z"),
      );
      // Clipping the response's end to the certificate's made it due every run.
      assertEquals(decision.renewAt?.toISOString(), "2026-06-03T00:00:00.000Z");
      assertEquals(decision.due, false);
      assertMatch(decision.reason, /past the certificate's end at 2026-06-03 00:00:00 UTC/);
    },
  );
  await t.step("an expired response is due, even for a certificate not yet valid", () => {
    // Lifespan clipped to a certificate that starts after nextUpdate: the
    // percentage alone put the renewal after expiry ("fine" while expired).
    const cert = { ...CERT, notBefore: new Date("2026-06-10T00:00:00Z") };
    const decision = planRenewal(
      { minimumValidityPercentage: 80 },
      cert,
      GOOD,
      at("2026-06-09T00:00:00Z"),
    );
    assertEquals(decision.due, true, decision.reason);
    assertMatch(decision.reason, /stored response expired at 2026-06-08 00:00:00 UTC/);
  });
});

Deno.test("planTarget() makes the one decision a run and --check share", async (t) => {
  const policy = { minimumValidityMs: 72 * HOUR };
  const urls = ["http://127.0.0.1/"];
  const expired = { ...CERT, notAfter: new Date("2026-06-01T00:00:00Z") };
  const [june2, june5] = [new Date("2026-06-02T00:00:00Z"), new Date("2026-06-05T00:00:00Z")];
  const cases: [string, Parameters<typeof planTarget>[0], Date, boolean, Plan["kind"], RegExp][] = [
    ["nothing stored", { cert: CERT, urls }, june2, false, "renew", /no response stored yet/],
    ["fresh", { cert: CERT, stored: GOOD, urls }, june2, false, "fresh", /due at 2026-06-05/],
    ["due", { cert: CERT, stored: GOOD, urls }, june5, false, "renew", /due since 2026-06-05/],
    ["forced while fresh", { cert: CERT, stored: GOOD, urls }, june2, true, "renew", /forced/],
    ["no OCSP URL", { cert: CERT, stored: GOOD, urls: [] }, june2, false, "skip", /no OCSP URL/],
    ["expired", { cert: expired, stored: GOOD, urls }, june2, false, "skip", /expired on/],
    // The one answer for both modes: expiry comes first, whether or not there is a URL.
    ["expired, no OCSP URL", { cert: expired, urls: [] }, june2, false, "skip", /expired on/],
    ["forced, expired", { cert: expired, stored: GOOD, urls }, june2, true, "skip", /expired on/],
  ];
  for (const [name, facts, now, forced, kind, reason] of cases) {
    await t.step(name, () => {
      const plan = planTarget(facts, policy, now, { forced });
      assertEquals(plan.kind, kind, plan.reason);
      assertMatch(plan.reason, reason);
      if (plan.kind === "renew") assertEquals(plan.urls, urls);
      if (plan.kind === "skip") {
        assertEquals(plan.why, name.includes("expired") ? "expired" : "no OCSP URL");
      }
    });
  }
});

Deno.test("the README lists every config key where it may be written, and no other", async () => {
  const readme = await Deno.readTextFile(path.join(import.meta.dirname!, "README.md"));
  const listed = (heading: string) => {
    const [, section] = readme.split(`\n### ${heading}\n`);
    assert(section !== undefined, `README.md has no "### ${heading}"`);
    return [...section.split("\n#")[0].matchAll(/^- `([a-z_]+)`(?:, `([a-z_]+)`)?/gm)]
      .flatMap((match) => match.slice(1).filter(Boolean)).sort();
  };
  const inTable = (place: Place) =>
    configKeys().filter((key) => key.places.includes(place)).map((key) => key.name).sort();
  assertEquals(listed("Keys at the top level"), inTable("top"));
  assertEquals(listed("Keys of each `domains` entry"), inTable("domain"));
  assertEquals(listed("Keys of each `scan_keys` entry"), inTable("scan"));
  assertEquals(inTable("include"), ["domains", "scan_keys"]);
});

Deno.test("the README keeps lines short and inline code whole", async () => {
  // Read in a raw file or a narrow terminal, and copied from: outside fenced
  // code no line runs past 100 characters, and no line holds an odd number
  // of backticks, which is an inline code span broken across two lines.
  const problems: string[] = [];
  for (const [file, text] of await readmeFiles()) {
    let fence: string | undefined;
    text.split("\n").forEach((line, index) => {
      const opening = /^\s*(`{3,}|~{3,})/.exec(line)?.[1];
      if (fence !== undefined) {
        if (opening?.[0] === fence[0] && opening.length >= fence.length) fence = undefined;
        return;
      }
      if (opening !== undefined) {
        fence = opening;
        return;
      }
      const where = `${file}:${index + 1}`;
      const length = [...line].length;
      if (length > 100) problems.push(`${where}: ${length} characters`);
      if ((line.match(/`/g) ?? []).length % 2 === 1) {
        problems.push(`${where}: inline code broken across lines: ${line}`);
      }
    });
    if (fence !== undefined) problems.push(`${file}: a code block is never closed`);
  }
  assertEquals(problems, []);
});

Deno.test("assess() gives --check's verdict on one certificate", async (t) => {
  const now = new Date("2026-06-02T00:00:00Z");
  const policy = { minimumValidityMs: 72 * HOUR };
  const urls = ["http://127.0.0.1/"];
  const expired = { ...CERT, notAfter: new Date("2026-06-01T00:00:00Z") };
  const failed = (since: string) => ({
    time: Date.parse("2026-06-01T23:00:00Z") / 1000,
    outcome: "failed" as const,
    message: "No usable response",
    failingSince: Date.parse(since) / 1000,
  });
  const cases: [string, Parameters<typeof planTarget>[0], Attempt | undefined, Date, string][] = [
    ["fresh", { cert: CERT, stored: GOOD, urls }, undefined, now, "fresh"],
    ["due, not tried", { cert: CERT, stored: GOOD, urls }, undefined, JUNE5, "due"],
    ["due, must-staple", { cert: STAPLED, stored: GOOD, urls }, undefined, JUNE5, "critical"],
    ["nothing stored", { cert: CERT, urls }, undefined, now, "critical"],
    [
      "not verifying",
      { cert: CERT, stored: { verified: false, problem: "x" }, urls },
      undefined,
      now,
      "critical",
    ],
    ["certificate expired", { cert: expired, stored: GOOD, urls }, undefined, now, "critical"],
    [
      "failing, half the window left",
      { cert: CERT, stored: GOOD, urls },
      failed("2026-06-01T00:00:00Z"),
      JUNE5,
      "failing",
    ],
    [
      "failing, under half left",
      { cert: CERT, stored: GOOD, urls },
      failed("2026-06-05T00:00:00Z"),
      new Date("2026-06-07T00:00:00Z"),
      "critical",
    ],
    [
      "revoked, said the responder",
      { cert: CERT, stored: GOOD, urls },
      { time: now.getTime() / 1000 - 60, outcome: "revoked", revocationReason: "keyCompromise" },
      now,
      "critical",
    ],
  ];
  for (const [name, facts, attempt, at, health] of cases) {
    await t.step(name, () => {
      const verdict = assess(planTarget(facts, policy, at), facts, attempt, at);
      assertEquals(verdict.health, health, verdict.line);
      assertMatch(verdict.line, health === "critical" ? /: CRITICAL/ : new RegExp(`: ${health}`));
      if (facts.cert.mustStaple) assertMatch(verdict.line, /, must-staple$/);
    });
  }
});

Deno.test("checkSummary() gives the Nagios plugin's line and status", async (t) => {
  const now = new Date("2026-06-02T00:00:00Z");
  const outcome = (id: string, health?: Health): Outcome => ({
    id,
    action: health ? "unchanged" : "skipped",
    certPath: `${id}.pem`,
    responsePath: `${id}.der`,
    status: "good",
    nextUpdate: new Date(now.getTime() + 30 * HOUR),
    endsAt: new Date(now.getTime() + 30 * HOUR),
    health,
  });
  const cases: [string, Outcome[], number, RegExp][] = [
    ["nothing", [], 3, /^OCSP UNKNOWN - no certificates found/],
    [
      "all fresh",
      [outcome("a", "fresh"), outcome("b", "fresh")],
      0,
      /^OCSP OK - 2 responses fresh, soonest expiry in 1d 6h \| soonest_expiry=108000s;259200;129600;0 fresh=2 due=0 failing=0 critical=0 skipped=0$/,
    ],
    [
      "one due",
      [outcome("a", "fresh"), outcome("b", "due")],
      1,
      /^OCSP WARNING - 1 of 2 responses due for renewal \(b\)/,
    ],
    ["one failing", [outcome("a", "failing")], 1, /^OCSP WARNING - 1 of 1 renewals failing \(a\)/],
    [
      "critical wins",
      [outcome("a", "due"), outcome("b", "critical")],
      2,
      /^OCSP CRITICAL - 1 of 2 critical \(b\), 1 of 2 responses due/,
    ],
    [
      "a skipped one",
      [outcome("a", "fresh"), outcome("le")],
      0,
      /, 1 skipped \(no OCSP URL\) \| .* skipped=1$/,
    ],
    [
      "six critical, five named",
      ["a", "b", "c", "d", "e", "f"].map((id) => outcome(id, "critical")),
      2,
      /\(a, b, c, d, e, 1 more\)/,
    ],
  ];
  for (const [name, outcomes, status, line] of cases) {
    await t.step(name, () => {
      const summary = checkSummary(outcomes, now, { minimumValidityMs: 72 * HOUR });
      assertEquals(summary.status, status, summary.line);
      assertMatch(summary.line, line);
    });
  }
});

Deno.test("--check's performance data follows the Nagios plugin guidelines' grammar", () => {
  const now = new Date("2026-06-02T00:00:00Z");
  const outcomes: Outcome[] = ["fresh", "due", "failing", "critical", undefined].map((
    health,
    i,
  ) => ({
    id: `c${i}`,
    action: health ? "unchanged" : "skipped",
    certPath: "c.pem",
    responsePath: "c.der",
    status: "good",
    nextUpdate: new Date(now.getTime() + (i + 1) * HOUR),
    endsAt: new Date(now.getTime() + (i + 1) * HOUR),
    health: health as Health | undefined,
  }));
  for (const policy of [{ minimumValidityMs: 6 * HOUR }, { minimumValidityPercentage: 50 }]) {
    const { line } = checkSummary(outcomes, now, policy);
    const [text, perfdata, more] = line.split(" | ");
    assert(more === undefined && !text.includes("|"), line);
    // 'label'=value[UOM];[warn];[crit];[min];[max], space-separated (guidelines, section 2.6).
    const range = String.raw`@?(-?[\d.]+|~)?(:(-?[\d.]+)?)?`;
    const datum = new RegExp(
      String
        .raw`^('[^'=]+'|[^' =]+)=-?[\d.]+(s|us|ms|%|B|KB|MB|TB|c)?(;(${range})?(;(${range})?(;(-?[\d.]+)?(;(-?[\d.]+)?)?)?)?)?$`,
    );
    const data = perfdata.split(" ");
    for (const item of data) assertMatch(item, datum);
    const values = Object.fromEntries(data.map((item) => item.split(/[=;]/).slice(0, 2)));
    assertEquals(values, {
      soonest_expiry: "3600s",
      fresh: "1",
      due: "1",
      failing: "1",
      critical: "1",
      skipped: "1",
    });
  }
});

Deno.test("nextAttempt() remembers when failing began, and forgets it on success", async (t) => {
  const [t1, t2, t3] = ["2026-06-01T00:00:00Z", "2026-06-01T01:00:00Z", "2026-06-01T02:00:00Z"]
    .map((iso) => new Date(iso));
  const seconds = (time: Date) => time.getTime() / 1000;
  const first = nextAttempt(undefined, "failed", t1, { message: "down" });
  const cases: [string, Attempt, Partial<Attempt>][] = [
    ["a first failure starts now", first, { outcome: "failed", failingSince: seconds(t1) }],
    ["a second keeps the start", nextAttempt(first, "failed", t2), { failingSince: seconds(t1) }],
    ["revoked after failing keeps it too", nextAttempt(first, "revoked", t2), {
      failingSince: seconds(t1),
    }],
    ["a renewal forgets it", nextAttempt(first, "renewed", t3), {
      time: seconds(t3),
      failingSince: undefined,
      message: undefined,
    }],
    ["the same response again is success", nextAttempt(first, "same", t3), {
      outcome: "same",
      failingSince: undefined,
    }],
  ];
  for (const [name, attempt, expected] of cases) {
    await t.step(name, () => {
      for (const [key, value] of Object.entries(expected)) {
        assertEquals(attempt[key as keyof Attempt], value, key);
      }
    });
  }
});

Deno.test("jsonReport() and metricsText() say the same of every certificate", async (t) => {
  const now = new Date("2026-06-02T00:00:00Z");
  const outcomes: Outcome[] = [
    {
      id: 'a"b\\c\nd',
      action: "renewed",
      certPath: "a.pem",
      responsePath: "a.der",
      responderUrl: "http://127.0.0.1/",
      mustStaple: true,
      status: "good",
      thisUpdate: GOOD.thisUpdate,
      nextUpdate: GOOD.nextUpdate,
      renewAt: new Date("2026-06-05T00:00:00Z"),
      attempt: { time: now.getTime() / 1000, outcome: "renewed" },
    },
    { id: "le", action: "skipped", certPath: "le.pem", responsePath: "le.der" },
  ];
  const totals = { renewed: 1, skipped: 1 };
  await t.step("JSON", () => {
    const report = JSON.parse(jsonReport("run", outcomes, totals, 1, now));
    assertEquals([report.mode, report.status, report.totals], ["run", 1, totals]);
    const a = report.certificates['a"b\\c\nd'];
    assertEquals(
      [a.action, a.mustStaple, a.nextUpdate, a.renewalTime, a.lastAttempt.outcome],
      ["renewed", true, "2026-06-08T00:00:00.000Z", "2026-06-05T00:00:00.000Z", "renewed"],
    );
    assertEquals(report.certificates.le.status, null);
    const failed = JSON.parse(jsonReport("check", [], {}, 3, now, "Cannot read config"));
    assertEquals([failed.status, failed.error], [3, "Cannot read config"]);
  });
  await t.step("metrics", () => {
    const kept = ['ocspbot_run_exit_status{mode="check"} 0'];
    const text = metricsText("run", outcomes, totals, 1, now, 0.5, kept);
    const label = 'id="a\\"b\\\\c\\nd"';
    for (
      const line of [
        `ocspbot_response_next_update_timestamp_seconds{${label}} ${
          GOOD.nextUpdate!.getTime() / 1000
        }`,
        `ocspbot_certificate_must_staple{${label}} 1`,
        `ocspbot_last_attempt_success{${label}} 1`,
        'ocspbot_run_exit_status{mode="run"} 1',
        'ocspbot_run_exit_status{mode="check"} 0',
        'ocspbot_run_certificates{mode="run",result="skipped"} 1',
      ]
    ) {
      assert(text.split("\n").includes(line), `no line ${line} in\n${text}`);
    }
    assert(!/id="le"/.test(text), "a certificate with no figures has lines");
  });
});

Deno.test("haproxyAddress() reads HAProxy's own socket syntax", async (t) => {
  const cases: [string, ReturnType<typeof haproxyAddress> | RegExp][] = [
    ["/run/haproxy/admin.sock", { transport: "unix", path: "/run/haproxy/admin.sock" }],
    ["unix@/run/haproxy/admin.sock", { transport: "unix", path: "/run/haproxy/admin.sock" }],
    ["ipv4@10.0.0.5:9999", { transport: "tcp", hostname: "10.0.0.5", port: 9999 }],
    ["ipv6@[2001:db8::5]:9999", { transport: "tcp", hostname: "2001:db8::5", port: 9999 }],
    ["ipv4@10.0.0.5", /is not "ipv4@host:port"/],
    ["ipv4@10.0.0.5:99999", /port 99999/],
  ];
  for (const [socket, expected] of cases) {
    await t.step(socket, () => {
      if (expected instanceof RegExp) {
        assertMatch(assertThrows(() => haproxyAddress(socket)).message, expected);
      } else assertEquals(haproxyAddress(socket), expected);
    });
  }
  await t.step("a bad one in the config is 253, naming the key", () => {
    const error = assertThrows(
      () =>
        interpretConfig(
          { minimum_validity: "1d", haproxy_socket: ["/a.sock", "ipv4@x"] },
          "c.yaml",
        ),
      ExitError,
    );
    assertEquals(error.status, 253);
    assertMatch(error.message, /"haproxy_socket\[1\]"/);
  });
});

Deno.test("serve: where a certificate is served, for --check to ask", async (t) => {
  const cases: [string, ServeAddress | RegExp][] = [
    ["127.0.0.1:443", { host: "127.0.0.1", port: 443 }],
    ["tls://www.example.com:8443", { host: "www.example.com", port: 8443 }],
    ["smtp://127.0.0.1:25", { host: "127.0.0.1", port: 25, starttls: "smtp" }],
    ["IMAP://[::1]:143", { host: "::1", port: 143, starttls: "imap" }],
    ["127.0.0.1", /must be "host:port"/],
    ["gopher://127.0.0.1:70", /neither tls:\/\/ nor one of/],
    ["127.0.0.1:70000", /port 70000/],
  ];
  for (const [text, expected] of cases) {
    await t.step(text, () => {
      if (expected instanceof RegExp) {
        assertMatch(assertThrows(() => serveAddress(text)).message, expected);
      } else assertEquals(serveAddress(text), expected);
    });
  }
  await t.step("in a config: a mapping gives the SNI name; a bad one is 253", () => {
    const config = interpretConfig(
      {
        minimum_validity: "1d",
        serve: "127.0.0.1:443",
        domains: {
          a: {
            cert: "a",
            ocsp: "a.der",
            serve: { address: "smtp://127.0.0.1:25", name: "mx.test" },
          },
        },
      },
      "c.yaml",
    );
    assertEquals(config.serve, { host: "127.0.0.1", port: 443 });
    assertEquals(config.domains[0].serve, {
      host: "127.0.0.1",
      port: 25,
      starttls: "smtp",
      servername: "mx.test",
    });
    const error = assertThrows(
      () => interpretConfig({ minimum_validity: "1d", serve: "nowhere" }, "c.yaml"),
      ExitError,
    );
    assertEquals([error.status, /"serve" must be/.test(error.message)], [253, true]);
  });
});

Deno.test("parseStapled() and servedVerdict() judge what a server staples", async (t) => {
  const now = new Date("2026-06-02T00:00:00Z");
  const stapledText = (serial: string, status: string, thisUpdate: string, nextUpdate: string) =>
    `CONNECTED(00000003)\nOCSP response: \n======================================\nOCSP Response Data:\n` +
    `    OCSP Response Status: successful (0x0)\n    Responses:\n    Certificate ID:\n` +
    `      Serial Number: ${serial}\n    Cert Status: ${status}\n    This Update: ${thisUpdate}\n` +
    `    Next Update: ${nextUpdate}\n======================================\n---\n`;
  const good = stapledText("1004", "good", "Jun  1 00:00:00 2026 GMT", "Jun  8 00:00:00 2026 GMT");
  await t.step("parseStapled()", () => {
    assertEquals(parseStapled(good), {
      status: "good",
      serial: "1004",
      thisUpdate: new Date("2026-06-01T00:00:00Z"),
      nextUpdate: new Date("2026-06-08T00:00:00Z"),
    });
    assertEquals(parseStapled("CONNECTED(00000003)\nOCSP response: no response sent\n"), "none");
    assertEquals(parseStapled("connect:errno=111\n"), undefined);
  });
  const stored: ResponseReport = { ...GOOD, thisUpdate: new Date("2026-06-01T00:00:00Z") };
  const cert: { serial: string; mustStaple: boolean; presented?: string } = {
    serial: "0x1004",
    mustStaple: false,
  };
  const cases: [
    string,
    string | undefined,
    typeof cert,
    ResponseReport | undefined,
    string,
    RegExp,
  ][] = [
    ["the stored response", good, cert, stored, "ok", /staples the stored response/],
    [
      "a newer one",
      stapledText("1004", "good", "Jun  1 12:00:00 2026 GMT", "Jun  8 12:00:00 2026 GMT"),
      cert,
      stored,
      "ok",
      /or a newer one/,
    ],
    [
      "an older one: not reloaded",
      stapledText("1004", "good", "May 31 00:00:00 2026 GMT", "Jun  7 00:00:00 2026 GMT"),
      cert,
      stored,
      "warning",
      /not reloaded since 2026-05-31 00:00:00 UTC/,
    ],
    [
      "another certificate's",
      stapledText("0FFF", "good", "Jun  1 00:00:00 2026 GMT", "Jun  8 00:00:00 2026 GMT"),
      cert,
      stored,
      "critical",
      /another certificate \(serial 0FFF, not 0x1004\)/,
    ],
    [
      "an expired one",
      stapledText("1004", "good", "May 20 00:00:00 2026 GMT", "May 27 00:00:00 2026 GMT"),
      cert,
      stored,
      "critical",
      /expired at 2026-05-27/,
    ],
    ["nothing", "OCSP response: no response sent\n", cert, stored, "warning", /staples nothing$/],
    [
      "nothing, must-staple",
      "OCSP response: no response sent\n",
      { ...cert, mustStaple: true },
      stored,
      "critical",
      /Must-Staple clients refuse/,
    ],
    ["no TLS at all", "connect:errno=111\n", cert, stored, "warning", /cannot ask .*: refused/],
    [
      "another certificate presented, with its own staple: reload, not renew",
      stapledText("0FFF", "good", "Jun  1 00:00:00 2026 GMT", "Jun  8 00:00:00 2026 GMT"),
      { ...cert, presented: "0FFF" },
      stored,
      "warning",
      /presents another certificate \(serial 0FFF, not the configured 0x1004\) and staples a good response for it: it was not reloaded .*; reload the server$/,
    ],
    [
      "another certificate presented, nothing stapled, must-staple",
      "OCSP response: no response sent\n",
      { ...cert, mustStaple: true, presented: "0FFF" },
      stored,
      "critical",
      /presents another certificate .* and staples nothing: .*reload the server$/,
    ],
    [
      "the configured certificate with another's staple: renew",
      stapledText("0FFF", "good", "Jun  1 00:00:00 2026 GMT", "Jun  8 00:00:00 2026 GMT"),
      { ...cert, presented: "1004" },
      stored,
      "critical",
      /another certificate \(serial 0FFF, not 0x1004\).*renew it/,
    ],
  ];
  for (const [name, stdout, certificate, storedResponse, verdict, message] of cases) {
    await t.step(name, () => {
      const served = servedVerdict(
        "127.0.0.1:443",
        parseStapled(stdout ?? ""),
        "refused",
        certificate,
        storedResponse,
        now,
      );
      assertEquals(served.verdict, verdict, served.message);
      assertMatch(served.message, message);
    });
  }
});

Deno.test("derLength() finds where openssl's DER response ends and its report begins", async (t) => {
  const report = new TextEncoder().encode("a.pem: good\n");
  const long = new Uint8Array(4 + 0x2cc).fill(7);
  long.set([0x30, 0x82, 0x02, 0xcc]);
  const cases: [string, Uint8Array, number | undefined][] = [
    ["tryLater, short form", new Uint8Array([0x30, 0x03, 0x0a, 0x01, 0x03, ...report]), 5],
    ["long form", new Uint8Array([...long, ...report]), 720],
    ["nothing written", new Uint8Array(), undefined],
    ["cut short (a full pipe or a crash)", long.subarray(0, 500), undefined],
    ["only openssl's report", report, undefined],
  ];
  for (const [name, bytes, length] of cases) {
    await t.step(name, () => assertEquals(derLength(bytes), length));
  }
});

Deno.test("recallReport() trusts a record only for the same bytes and before expiry", async (t) => {
  const files = ["1:2:3:4:5 r1", "1:2:3:6:5 c1", "1:2:3:7:5 h1", " R1"];
  const record = recordOf(GOOD, CERT, files);
  const cases: [string, string[], string, boolean][] = [
    ["the same bytes, fresh", files, "2026-06-02T00:00:00Z", true],
    [
      "the same bytes, other stamps (touched)",
      ["9:9:9:9:9 r1", ...files.slice(1)],
      "2026-06-02T00:00:00Z",
      true,
    ],
    ["another response", ["1:2:3:4:5 r2", ...files.slice(1)], "2026-06-02T00:00:00Z", false],
    ["another rootchain", [...files.slice(0, 3), " R2"], "2026-06-02T00:00:00Z", false],
    ["expired since", files, "2026-06-08T00:00:00Z", false],
  ];
  for (const [name, filesNow, now, trusted] of cases) {
    await t.step(name, () => {
      const recalled = recallReport(record, filesNow, new Date(now));
      assertEquals(recalled !== undefined, trusted);
      if (recalled) {
        assertEquals(recalled.report, {
          status: "good",
          verified: true,
          thisUpdate: GOOD.thisUpdate,
          nextUpdate: GOOD.nextUpdate,
        });
        assertEquals(recalled.cert, CERT);
      }
    });
  }
  await t.step("a mangled record", () => {
    const now = new Date("2026-06-02T00:00:00Z");
    assertEquals(recallReport({ ...record, thisUpdate: NaN }, files, now), undefined);
    assertEquals(recallReport({ ...record, files: files.slice(1) }, files, now), undefined);
  });
});

Deno.test("fileStamp() trusts stat only for a file that has settled", async (t) => {
  const info = (changedMs: number) =>
    ({
      size: 720,
      mtime: new Date(changedMs),
      ctime: new Date(changedMs - (changedMs % 1000)),
      ino: 42,
      dev: 7,
    }) as Deno.FileInfo;
  const changed = Date.UTC(2026, 5, 1, 0, 0, 0, 250);
  await t.step("changed 3 s ago: stamped", () => {
    const stamp = fileStamp(info(changed), changed + 3000);
    // size, mtime (ms), ctime (s), inode, device, in base 36.
    const base36 = [720, changed, (changed - 250) / 1000, 42, 7].map((n) => n.toString(36));
    assertEquals(stamp, base36.join("."));
    assertEquals(unchangedEntry(fileEntry(stamp, "h"), stamp), `${stamp} h`);
  });
  await t.step("changed within the same second as ctime shows: no stamp", () => {
    assertEquals(fileStamp(info(changed), changed + 1000), "");
  });
  await t.step("no stamp never matches", () => {
    assertEquals(unchangedEntry(" h", ""), undefined);
  });
});

Deno.test("rejectFetched() keeps anything worse than what is stored out", async (t) => {
  const now = new Date("2026-06-02T00:00:00Z");
  const cases: [string, ResponseReport, ResponseReport | undefined, RegExp | undefined][] = [
    [
      "a newer good response",
      { ...GOOD, thisUpdate: new Date("2026-06-02T00:00:00Z") },
      GOOD,
      undefined,
    ],
    ["no stored one", GOOD, undefined, undefined],
    [
      "not verified",
      { ...GOOD, verified: false, problem: "bad signer" },
      GOOD,
      /does not verify: bad signer/,
    ],
    [
      "revoked",
      {
        ...GOOD,
        status: "revoked",
        revocationTime: new Date("2026-05-01T00:00:00Z"),
        revocationReason: "keyCompromise",
      },
      GOOD,
      /revoked since 2026-05-01 00:00:00 UTC \(keyCompromise\)/,
    ],
    ["unknown", { ...GOOD, status: "unknown" }, GOOD, /is unknown/],
    [
      "expired",
      { ...GOOD, nextUpdate: new Date("2026-06-01T12:00:00Z") },
      undefined,
      /expired already/,
    ],
    [
      "from the future",
      { ...GOOD, thisUpdate: new Date("2026-06-02T01:00:00Z") },
      undefined,
      /in the future/,
    ],
    [
      "older than stored",
      { ...GOOD, thisUpdate: new Date("2026-05-31T00:00:00Z") },
      GOOD,
      /older than the stored one/,
    ],
    ["older than a broken stored one", { ...GOOD, thisUpdate: new Date("2026-05-31T00:00:00Z") }, {
      verified: false,
    }, undefined],
  ];
  for (const [name, fetched, stored, rejection] of cases) {
    await t.step(name, () => {
      const result = rejectFetched(fetched, stored, now);
      if (rejection) assertMatch(result ?? "", rejection);
      else assertEquals(result, undefined);
    });
  }
});

Deno.test("exitStatus() keeps renewal counts below the error codes", async (t) => {
  const base = {
    renewed: 0,
    unchanged: 0,
    skipped: 0,
    expired: 0,
    failed: 0,
    notProcessed: 0,
    onChangeFailed: false,
  };
  const cases: [string, Partial<typeof base>, number][] = [
    ["nothing", {}, 0],
    ["three renewed", { renewed: 3 }, 3],
    ["251 renewed", { renewed: 251 }, 251],
    ["256 renewed is not 0", { renewed: 256 }, 251],
    ["a failure wins", { renewed: 3, failed: 1 }, 255],
    ["skipped is no failure", { skipped: 4 }, 0],
    ["stop_on_error left some", { notProcessed: 2 }, 255],
    ["on_change failed", { renewed: 2, onChangeFailed: true }, 255],
  ];
  for (const [name, counts, status] of cases) {
    await t.step(name, () => assertEquals(exitStatus({ ...base, ...counts }), status));
  }
  assertEquals(
    summaryLine({ ...base, renewed: 2, unchanged: 3, failed: 1 }),
    "Failure: 3 unchanged OCSP responses, 2 updated OCSP responses and 1 failures.",
  );
  assertEquals(
    summaryLine({ ...base, unchanged: 1, skipped: 3, expired: 1 }),
    "Success: 1 unchanged OCSP responses, 0 updated OCSP responses and 0 failures. 3 certificates skipped (2 no OCSP URL, 1 expired).",
  );
});

Deno.test("formatLogName() fills the placeholders zero-padded", () => {
  const now = new Date(2026, 0, 2, 3, 4, 5);
  assertEquals(
    formatLogName("/var/log/ocsp-{year}{month}{day}-{hour}{minute}{second}.log", now),
    "/var/log/ocsp-20260102-030405.log",
  );
});

Deno.test("runPool() bounds concurrency and stops handing out work after a stop", async () => {
  let running = 0;
  let peak = 0;
  const started: number[] = [];
  const { results, notStarted } = await runPool(
    Array.from({ length: 20 }, (_, i) => i),
    4,
    async (item) => {
      started.push(item);
      running++;
      peak = Math.max(peak, running);
      await new Promise((resolve) => setTimeout(resolve, 5));
      running--;
      return item;
    },
    (item) => item === 5,
  );
  assertEquals(peak, 4);
  // Items 6..8 were in flight when 5 finished; they are awaited, not abandoned.
  assertEquals(results.length, started.length);
  assert(notStarted > 0 && notStarted < 20 - 6, `notStarted ${notStarted}`);
});

// ------------------------------------------ the bot against a responder --

Deno.test("first run fetches every response; the second changes nothing", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test", "b.test", "c.test"]);
    const first = await runMain(site);
    assertEquals(first.code, 3, first.stderr);
    assertEquals(first.stderr, "");
    assertMatch(
      first.stdout,
      /Success: 0 unchanged OCSP responses, 3 updated OCSP responses and 0 failures\./,
    );
    assertMatch(first.stdout, /^\[a\.test\] Stored new OCSP response: good/m);
    for (const name of ["a.test", "b.test", "c.test"]) {
      assertEquals(
        await ca.verifiedStatus(response(site, name), path.join(site, "certs", `${name}.pem`)),
        "good",
      );
      assertEquals(await exists(response(site, name) + ".new"), false);
    }
    // OpenSSL 1.x sent no Host; we send exactly one, with the port.
    assertEquals(ca.hostHeaders, Array(3).fill(new URL(ca.url).host));

    const stored = await Deno.readFile(response(site, "a.test"));
    const second = await runMain(site);
    assertEquals(second.code, 0, second.stderr);
    assertMatch(
      second.stdout,
      /Success: 3 unchanged OCSP responses, 0 updated OCSP responses and 0 failures\./,
    );
    assertEquals(ca.hostHeaders.length, 3, "the second run asked the responder");
    assertEquals(await Deno.readFile(response(site, "a.test")), stored);
  });
});

Deno.test("a verified response is trusted until a byte of it, its cert or chain changes", async (t) => {
  await withCa(async (ca) => {
    const names = ["a.test", "b.test", "c.test"];
    const site = await makeSite(ca, names);
    const calls = await TestCa.writeCountingOpenssl(path.join(site, "openssl"));
    await Deno.writeTextFile(
      path.join(site, "ocspbot.yaml"),
      BASE_CONFIG + `openssl_executable: ${path.join(site, "openssl")}\n`,
    );
    const certs = path.join(site, "certs");
    const runCounting = async () => {
      const before = (await calls()).length;
      const run = await runMain(site);
      return { ...run, calls: (await calls()).length - before };
    };

    await t.step("first run: one openssl process per certificate", async () => {
      const run = await runCounting();
      assertEquals(run.code, 3, run.stderr);
      assertEquals(run.calls, 3);
      assert(await exists(path.join(site, "responses", ".ocspbot-state.json")));
    });
    await t.step("nothing changed: no openssl at all", async () => {
      const run = await runCounting();
      assertEquals(run.code, 0, run.stderr);
      assertEquals(run.calls, 0);
    });
    await t.step("a chain changed: verified again, still fine", async () => {
      await Deno.writeTextFile(path.join(certs, "a.test-chain.pem"), "\n", { append: true });
      const run = await runCounting();
      assertEquals([run.code, run.calls], [0, 1], run.stderr);
      assertEquals((await runCounting()).calls, 0, "the new chain was not remembered");
    });
    await t.step("a certificate changed: verified again", async () => {
      await Deno.writeTextFile(path.join(certs, "c.test.pem"), "\n", { append: true });
      const run = await runCounting();
      assertEquals([run.code, run.calls], [0, 1], run.stderr);
    });
    await t.step("a response replaced on disk by a forgery: caught and renewed", async () => {
      const forged = await ca.respond(path.join(certs, "b.test.pem"), "rogue");
      await Deno.writeFile(response(site, "b.test"), forged);
      const run = await runCounting();
      assertEquals([run.code, run.calls], [1, 2], run.stdout + run.stderr);
      assertMatch(run.stdout, /\[b\.test\] Renewing .*stored response does not verify/);
      assertEquals(
        await ca.verifiedStatus(response(site, "b.test"), path.join(certs, "b.test.pem")),
        "good",
      );
      assertNotEquals(await Deno.readFile(response(site, "b.test")), forged);
    });
    await t.step("a broken state file: a warning, and everything verified again", async () => {
      await Deno.writeTextFile(path.join(site, "responses", ".ocspbot-state.json"), "{not json");
      const run = await runCounting();
      assertEquals([run.code, run.calls], [0, 3], run.stderr);
      assertMatch(run.stderr, /WARNING: Ignoring state file/);
    });
    await t.step("a state a newer ocspbot wrote: said once, and rebuilt", async () => {
      const state = path.join(site, "responses", ".ocspbot-state.json");
      const newer = STATE_VERSION + 1;
      await Deno.writeTextFile(state, JSON.stringify({ ocspbot: "state", version: newer }) + "\n");
      const run = await runCounting();
      assertEquals([run.code, run.calls], [0, 3], run.stderr);
      assertMatch(
        run.stderr,
        new RegExp(
          `^WARNING: State file ".*" was written by a newer ocspbot \\(state version ${newer}\\); .* rebuilds it`,
          "m",
        ),
      );
      const [header] = (await Deno.readTextFile(state)).split("\n");
      assertEquals(JSON.parse(header).version, STATE_VERSION);
      const again = await runCounting();
      assertEquals([again.code, again.calls, again.stderr], [0, 0, ""]);
    });
  });
});

Deno.test("a settled file is trusted by its stat; a byte changed under an old mtime is still caught", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    const calls = await TestCa.writeCountingOpenssl(path.join(site, "openssl"));
    await Deno.writeTextFile(
      path.join(site, "ocspbot.yaml"),
      BASE_CONFIG + `openssl_executable: ${path.join(site, "openssl")}\n`,
    );
    const stateFile = path.join(site, "responses", ".ocspbot-state.json");
    const runCounting = async () => {
      const before = (await calls()).length;
      const run = await runMain(site, [], {}, SETTLED);
      return { ...run, calls: (await calls()).length - before };
    };
    assertEquals((await runCounting()).code, 1);
    // Only a file that has not changed for 2 s is stamped (ctime has whole seconds).
    await nextWholeSecond();

    await t.step("settled: stamped, then trusted without openssl and without a write", async () => {
      const stamping = await runCounting();
      assertEquals([stamping.code, stamping.calls], [0, 0], stamping.stderr);
      const [, line] = (await Deno.readTextFile(stateFile)).split("\n");
      const { files } = parseStateLine(line).verified!;
      assert(files.every((entry) => !entry.startsWith(" ")), `unstamped: ${files}`);
      const written = await Deno.stat(stateFile);
      const trusted = await runCounting();
      assertEquals([trusted.code, trusted.calls], [0, 0], trusted.stderr);
      const after = await Deno.stat(stateFile);
      assertEquals(
        [after.ino, after.mtime],
        [written.ino, written.mtime],
        "the state was rewritten",
      );
    });

    await t.step("a byte changed, the mtime set back with touch -r: verified again", async () => {
      const file = response(site, "a.test");
      const reference = path.join(site, "mtime-reference");
      // touch on the real clock: under faketime (CI's guard) libfaketime shifts
      // the times stat reports, and touch -r would write them back shifted.
      const touch = (from: string, to: string) =>
        new Deno.Command("touch", { args: ["-r", from, to], env: { LD_PRELOAD: "" } }).output();
      await Deno.copyFile(file, reference);
      await touch(file, reference);
      const bytes = await Deno.readFile(file);
      bytes[bytes.length - 1] ^= 0xff; // the signature's last byte: same size, no longer valid
      await Deno.writeFile(file, bytes);
      await touch(reference, file);
      assertEquals((await Deno.stat(file)).mtime, (await Deno.stat(reference)).mtime);
      const run = await runCounting();
      assertEquals([run.code, run.calls], [1, 2], run.stdout + run.stderr);
      assertMatch(run.stdout, /\[a\.test\] Renewing .*stored response does not verify/);
    });
  });
});

Deno.test("the bench's floor reads the state as the bot writes it, and sees a changed file", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test", "b.test"]);
    assertEquals((await runMain(site)).code, 2);
    // Only a file that has not changed for 2 s is stamped (ctime has whole seconds).
    await nextWholeSecond();
    assertEquals((await runMain(site, [], {}, SETTLED)).code, 0);
    const layout: FloorLayout = {
      clockAheadMs: 2100,
      state: path.join(site, "responses", ".ocspbot-state.json"),
      folder: path.join(site, "certs"),
      cert: "{domain}.pem",
      chain: "{domain}-chain.pem",
      rootchain: "{domain}-rootchain.pem",
      ocsp: "{domain}.ocsp-resp",
    };
    const state = readState(layout.state);
    const seen: string[] = [];
    state.records((responsePath, files) => {
      seen.push(responsePath);
      const info = Deno.statSync(responsePath);
      assertEquals(state.stamp(info, SETTLED()), fileStamp(info, SETTLED()));
      assert(files?.[0].startsWith(fileStamp(info, SETTLED()) + state.separator), `${files}`);
    });
    assertEquals(seen.sort(), [response(site, "a.test"), response(site, "b.test")]);
    const floor = async () =>
      (await new Deno.Command(Deno.execPath(), {
        args: ["run", "--quiet", "--allow-read", FLOOR_SCRIPT, JSON.stringify(layout)],
        stdout: "null",
        stderr: "null",
      }).output()).code;
    assertEquals(await floor(), 0);
    const cert = path.join(site, "certs", "b.test.pem");
    await Deno.utime(cert, new Date(), new Date(Date.now() - HOUR));
    assertEquals(await floor(), 1, "the floor missed a changed certificate");
  });
});

Deno.test("a settled scan folder is not listed again, yet every change to it is seen", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test", "b.test"]);
    const certs = path.join(site, "certs");
    const stateFile = path.join(site, "responses", ".ocspbot-state.json");
    const settle = nextWholeSecond;
    // touch on the real clock, as in the test above.
    const touch = (from: string, to: string) =>
      new Deno.Command("touch", { args: ["-r", from, to], env: { LD_PRELOAD: "" } }).output();
    const reference = path.join(site, "mtime-reference");
    /** Changes the folder with `change`, then sets its mtime back. */
    const underOldMtime = async (change: () => Promise<unknown>) => {
      await Deno.writeTextFile(reference, "");
      await touch(certs, reference);
      await change();
      await touch(reference, certs);
      assertEquals((await Deno.stat(certs)).mtime, (await Deno.stat(reference)).mtime);
      await settle();
    };
    const renewedIds = async () => {
      const run = await runMain(site, ["--json"], {}, SETTLED);
      const certificates = JSON.parse(run.stdout).certificates;
      return { code: run.code, ids: Object.keys(certificates).sort() };
    };
    assertEquals((await runMain(site, [], {}, SETTLED)).code, 2);
    await settle();

    await t.step("settled: the scan is remembered with the folder's stamp", async () => {
      assertEquals(await renewedIds(), { code: 0, ids: ["a.test", "b.test"] });
      const scans = JSON.parse((await Deno.readTextFile(stateFile)).split("\n")[0]).scans;
      const key = Object.keys(scans).find((folder) => folder.startsWith(`${certs}\n`));
      assertEquals(key && scans[key].domains, ["a.test", "b.test"]);
    });
    await t.step("a certificate added, the mtime set back: found", async () => {
      await underOldMtime(() => ca.issueLeaf(certs, "c.test"));
      assertEquals(await renewedIds(), { code: 1, ids: ["a.test", "b.test", "c.test"] });
    });
    await t.step("a certificate removed, the mtime set back: gone, not an error", async () => {
      await underOldMtime(() => Deno.remove(path.join(certs, "b.test.pem")));
      assertEquals(await renewedIds(), { code: 0, ids: ["a.test", "c.test"] });
    });
    await t.step("a link whose target appears later, the folder unchanged: found", async () => {
      const elsewhere = path.join(site, "elsewhere");
      const files = await ca.issueLeaf(elsewhere, "d.test");
      await Deno.rename(files.cert, path.join(elsewhere, "d.later"));
      await Deno.symlink(files.cert, path.join(certs, "d.test.pem"));
      for (const name of ["d.test-chain.pem", "d.test-rootchain.pem"]) {
        await Deno.copyFile(path.join(elsewhere, name), path.join(certs, name));
      }
      await settle();
      assertEquals((await renewedIds()).ids, ["a.test", "c.test"], "a dangling link was a cert");
      await renewedIds();
      await Deno.rename(path.join(elsewhere, "d.later"), files.cert);
      assertEquals(await renewedIds(), { code: 1, ids: ["a.test", "c.test", "d.test"] });
    });
    await t.step(
      "responses and state in the scanned folder: a quiet hour writes nothing",
      async () => {
        const shared = path.join(site, "shared");
        await ca.issueLeaf(shared, "e.test");
        await Deno.writeTextFile(
          path.join(shared, "ocspbot.yaml"),
          'minimum_validity: 6h\nscan_keys:\n  - folder: ""\n',
        );
        assertEquals((await runMain(shared, [], {}, SETTLED)).code, 1);
        await settle();
        assertEquals((await runMain(shared, [], {}, SETTLED)).code, 0);
        const written = await Deno.stat(path.join(shared, ".ocspbot-state.json"));
        await settle();
        assertEquals((await runMain(shared, [], {}, SETTLED)).code, 0);
        const after = await Deno.stat(path.join(shared, ".ocspbot-state.json"));
        assertEquals(
          [after.ino, after.mtime],
          [written.ino, written.mtime],
          "the state was rewritten",
        );
      },
    );
  });
});

Deno.test("a response is renewed when its time comes, by time and by percentage", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    assertEquals((await runMain(site)).code, 1);
    // 24 h responses; minimum_validity 6h: due 18 h after thisUpdate.
    await t.step("17 h later: not yet", async () => {
      const run = await runMain(site, [], fakeNow(17 * HOUR));
      assertEquals(run.code, 0, run.stdout + run.stderr);
      assertMatch(run.stdout, /renewal due at/);
    });
    await t.step("19 h later: renewed", async () => {
      const run = await runMain(site, [], fakeNow(19 * HOUR));
      assertEquals(run.code, 1, run.stdout + run.stderr);
      assertMatch(run.stdout, /due since/);
    });
    await t.step("percentage 75: due after 6 h of 24", async () => {
      await Deno.writeTextFile(
        path.join(site, "ocspbot.yaml"),
        BASE_CONFIG.replace("minimum_validity: 6h", "minimum_validity_percentage: 75"),
      );
      assertEquals((await runMain(site, [], fakeNow(5 * HOUR))).code, 0);
      assertEquals((await runMain(site, [], fakeNow(7 * HOUR))).code, 1);
    });
  });
});

Deno.test("a certificate ending before its response: no renewal and no reload every run", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(
      ca,
      [],
      BASE_CONFIG.replace("6h", "2h") + "on_change: [touch, reloaded]\n",
    );
    await ca.issueLeaf(path.join(site, "certs"), "short.test", { days: 1 });
    assertEquals((await runMain(site)).code, 1);
    await Deno.remove(path.join(site, "reloaded"));
    // 90 minutes before the certificate ends; the response lives 24 h, past it.
    const late = fakeNow(24 * HOUR - 90 * 60_000);
    for (let run = 1; run <= 3; run++) {
      const quiet = await runMain(site, [], late);
      assertEquals(quiet.code, 0, `run ${run}: ${quiet.stdout}${quiet.stderr}`);
    }
    assertEquals(await exists(path.join(site, "reloaded")), false, "on_change ran");
    const check = await runMain(site, ["--check"], late);
    assertEquals(check.code, 0, check.stdout);
    assertMatch(check.stdout, /past the certificate's end at .* \(1h 29m left\): fresh$/m);
  });
});

Deno.test("decisions are the same under every TZ", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    assertEquals((await runBot(site)).code, 1);
    const stored = await Deno.readFile(response(site, "a.test"));
    for (const tz of ["UTC", "America/New_York", "Asia/Kolkata"]) {
      await Deno.writeFile(response(site, "a.test"), stored);
      // Due at thisUpdate + 18 h; a local-time clock would be off by hours.
      const before = await runBot(site, [], { TZ: tz, ...fakeNow(17.5 * HOUR) });
      assertEquals(before.code, 0, `${tz}: ${before.stdout}`);
      const after = await runBot(site, [], { TZ: tz, ...fakeNow(18.5 * HOUR) });
      assertEquals(after.code, 1, `${tz}: ${after.stdout}`);
    }
  });
});

Deno.test("revoked and unknown answers fail and never replace a good response", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["r.test", "u.test"]);
    assertEquals((await runMain(site)).code, 2);
    const goodR = await Deno.readFile(response(site, "r.test"));
    const goodU = await Deno.readFile(response(site, "u.test"));
    const certs = path.join(site, "certs");
    ca.setStatus(await serialOf(path.join(certs, "r.test.pem")), "revoked");
    ca.setStatus(await serialOf(path.join(certs, "u.test.pem")), "unknown");

    const run = await runMain(site, [], fakeNow(19 * HOUR));
    assertEquals(run.code, 255);
    assertMatch(
      run.stderr,
      /^\[r\.test\] ERROR: responder says the certificate is revoked since .*keyCompromise/m,
    );
    assertMatch(run.stderr, /^\[u\.test\] ERROR: responder says the certificate is unknown/m);
    assert(!/Stored new OCSP response/.test(run.stdout), "a revoked response was stored");
    assertMatch(
      run.stdout,
      /^Failure: 0 unchanged OCSP responses, 0 updated OCSP responses and 2 failures\.$/m,
    );
    assertEquals(await Deno.readFile(response(site, "r.test")), goodR);
    assertEquals(await Deno.readFile(response(site, "u.test")), goodU);
    assertMatch(run.stderr, /the answer is in ".*\/\.r\.test\.ocsp-resp\.rejected" for inspection/);
    assertEquals(
      await ca.verifiedStatus(
        rejectedPath(response(site, "r.test")),
        path.join(certs, "r.test.pem"),
      ),
      "revoked",
    );
  });
});

Deno.test("a broken responder fails the certificate and keeps the stored response", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "timeout: 1\nretries: 0\n");
    assertEquals((await runMain(site)).code, 1);
    const stored = await Deno.readFile(response(site, "a.test"));
    const cases: [string, () => void, RegExp][] = [
      ["HTTP 500", () => ca.mode = "http500", /code=500/],
      ["garbage", () => ca.mode = "garbage", /No response from/],
      [
        "wrong signer",
        () => ca.mode = "wrong-signer",
        /does not verify: .*certificate verify error/,
      ],
      ["hanging", () => ca.mode = "hang", /timed out|did not finish within 1 s|timeout/i],
    ];
    for (const [name, breakIt, message] of cases) {
      await t.step(name, async () => {
        breakIt();
        const started = Date.now();
        const run = await runMain(site, [], fakeNow(19 * HOUR));
        assertEquals(run.code, 255, run.stdout + run.stderr);
        assertMatch(run.stderr, /^\[a\.test\] ERROR: /m);
        assertMatch(run.stderr, message);
        assertEquals(await Deno.readFile(response(site, "a.test")), stored);
        assert(Date.now() - started < 15_000, "took too long");
      });
    }
    await t.step("responder down", async () => {
      ca.mode = "good";
      const config = BASE_CONFIG.replace("scan_keys:\n  - folder: certs\n", "") + `domains:
  a.test:
    cert: certs/a.test.pem
    chain: certs/a.test-chain.pem
    rootchain: certs/a.test-rootchain.pem
    ocsp: a.test.ocsp-resp
    ocsp_responder_uri: http://127.0.0.1:9/
timeout: 1
retries: 0
`;
      await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), config);
      const run = await runMain(site, [], fakeNow(19 * HOUR));
      assertEquals(run.code, 255);
      assertMatch(run.stderr, /No response from http:\/\/127\.0\.0\.1:9\//);
      assertEquals(await Deno.readFile(response(site, "a.test")), stored);
    });
  });
});

Deno.test("a fetched response that is stale, older or the same is not stored", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    const cert = path.join(site, "certs", "a.test.pem");
    const older = await ca.respond(cert);
    // thisUpdate has whole seconds: let the stored response be newer.
    await nextWholeSecond();
    assertEquals((await runMain(site)).code, 1);
    const stored = await Deno.readFile(response(site, "a.test"));

    await t.step("expired at the time of the run", async () => {
      const run = await runMain(site, [], fakeNow(25 * HOUR));
      assertEquals(run.code, 255);
      assertMatch(run.stderr, /expired already/);
      assertEquals(await Deno.readFile(response(site, "a.test")), stored);
    });
    await t.step("older than the stored one", async () => {
      ca.mode = { fixed: older };
      const run = await runMain(site, [], fakeNow(19 * HOUR));
      assertEquals(run.code, 255);
      assertMatch(run.stderr, /older than the stored one/);
      assertEquals(await Deno.readFile(response(site, "a.test")), stored);
    });
    await t.step("the stored one again", async () => {
      ca.mode = { fixed: stored };
      const run = await runMain(site, [], fakeNow(19 * HOUR));
      assertEquals(run.code, 0, run.stderr);
      assertMatch(run.stdout, /\[a\.test\] Responder sent the stored response again/);
      assertMatch(run.stdout, /Success: 1 unchanged/);
      assertEquals(await exists(response(site, "a.test") + ".new"), false);
    });
  });
});

Deno.test("a responder certificate that ends before nextUpdate: renewed before it ends", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    // Its certificate lives 1 day, the responses it signs 2: clients refuse them after a day.
    const signer = await ca.issueSigner("short-lived signer", 1);
    const signerEnd = new Date(
      decoder.decode(await openssl(["x509", "-in", signer.cert, "-noout", "-enddate"]))
        .trim().replace("notAfter=", ""),
    );
    ca.mode = { signer };
    ca.validityMinutes = 48 * 60;
    const first = await runMain(site, ["--json"]);
    assertEquals(first.code, 1, first.stderr);
    const renewalTime = new Date(JSON.parse(first.stdout).certificates["a.test"].renewalTime);
    // minimum_validity: 6h before the signer's end, not 6 h before nextUpdate (42 h away).
    assertEquals(renewalTime.getTime(), signerEnd.getTime() - 6 * HOUR);
    const before = await runMain(site, [], fakeNow(17 * HOUR));
    assertMatch(before.stdout, /but its responder's certificate ends at .*, renewal due at/);
    assertEquals(before.code, 0, before.stdout + before.stderr);
    ca.mode = "good";
    const due = await runMain(site, [], fakeNow(19 * HOUR));
    assertEquals(due.code, 1, due.stdout + due.stderr);
  });
});

Deno.test("responseContents() reads the answers and the signer of a response", async () => {
  await withCa(async (ca) => {
    const leaf = await ca.issueLeaf(path.join(ca.dir, "l"), "a.test");
    const response = await ca.respond(leaf.cert);
    const serial = new X509Certificate(await Deno.readTextFile(leaf.cert)).serialNumber;
    const bytes = Uint8Array.from(serial.match(/../g)!.map((pair) => parseInt(pair, 16)));
    const contents = responseContents(response, bytes);
    const signer = new X509Certificate(await Deno.readTextFile(ca.keyPair("signer").cert));
    assertEquals(contents?.ours.map((answer) => answer.status), ["good"]);
    assertEquals(contents?.others, 0);
    assertEquals(contents?.signerNotAfter, new Date(signer.validTo));
    assertEquals(responseContents(response, new Uint8Array([0x7f]))?.ours, []);
    assertEquals(
      responseContents(new Uint8Array([0x30, 0x03, 0x0a, 0x01, 0x03]), bytes),
      undefined,
    );
    assertEquals(responseContents(new TextEncoder().encode("not DER"), bytes), undefined);
  });
});

Deno.test("the issuer is found for every key and signature openssl verifies: ECDSA, Ed25519, RSA-PSS", async (t) => {
  for (const keys of ["p256", "p384", "ed25519", "rsa-pss-signatures", "rsa-pss-keys"] as const) {
    await t.step(keys, async () => {
      const ca = await TestCa.create({ keys });
      try {
        // The intermediate after the leaf in a fullchain: openssl is handed it on stdin.
        const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "    chain_mask: null\n");
        const certs = path.join(site, "certs");
        await Deno.writeTextFile(
          path.join(certs, "a.test.pem"),
          (await Deno.readTextFile(path.join(certs, "a.test.pem"))) +
            (await Deno.readTextFile(ca.chain)),
        );
        const run = await runMain(site);
        assertEquals(run.code, 1, run.stdout + run.stderr);
        const leaf = path.join(site, "leaf.pem");
        await Deno.writeFile(leaf, await openssl(["x509", "-in", path.join(certs, "a.test.pem")]));
        assertEquals(await ca.verifiedStatus(response(site, "a.test"), leaf), "good");
      } finally {
        await ca.close();
      }
    });
  }
});

Deno.test("a negative serial is asked for as encoded", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, []);
    const leaf = await ca.issueLeaf(path.join(site, "certs"), "old-ca.test", { serial: "-0x1234" });
    assertEquals(leaf.serial, "-1234");
    const run = await runMain(site);
    assertEquals(run.code, 1, run.stdout + run.stderr);
    assertEquals(await ca.verifiedStatus(response(site, "old-ca.test"), leaf.cert), "good");
  });
});

Deno.test("a Must-Staple certificate without an OCSP URL is an error, and CRITICAL in --check", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, []);
    await ca.issueLeaf(path.join(site, "certs"), "staple.test", { ocspUrls: [], mustStaple: true });
    const run = await runMain(site);
    assertEquals(run.code, 255, run.stdout + run.stderr);
    assertMatch(
      run.stderr,
      /^\[staple\.test\] ERROR: Certificate ".*staple\.test\.pem" requires a staple .* names no OCSP responder.*"ocsp_responder_uri", or use a certificate without Must-Staple$/m,
    );
    const check = await runMain(site, ["--check"]);
    assertEquals(check.code, 2, check.stdout);
    assertMatch(
      check.stdout,
      /^\[staple\.test\] certificate requires a staple .*: CRITICAL, must-staple$/m,
    );
  });
});

Deno.test("a certificate issued minutes ago and unknown to its responder: a warning, then an error", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, []);
    await ca.issueLeaf(path.join(site, "certs"), "new.test", { status: "unknown" });
    await t.step("within 15 minutes: retried next run, no failure", async () => {
      const run = await runMain(site);
      assertEquals(run.code, 0, run.stdout + run.stderr);
      assertMatch(
        run.stderr,
        /^\[new\.test\] WARNING: Certificate ".*" was issued \d+m ago and is not yet known to the responder \(responder says the certificate is unknown\); retried next run$/m,
      );
    });
    await t.step("after 15 minutes: a failure", async () => {
      const run = await runMain(site, [], fakeNow(20 * 60_000));
      assertEquals(run.code, 255, run.stdout + run.stderr);
      assertMatch(run.stderr, /ERROR: responder says the certificate is unknown/);
    });
  });
});

Deno.test("responder URLs: a broken one is a failed attempt, a capital scheme is a scheme, a redirect is followed or named", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, [], BASE_CONFIG + "retries: 0\ntimeout: 2\n");
    const certs = path.join(site, "certs");
    await t.step("a malformed first URL: the next one is asked", async () => {
      await ca.issueLeaf(certs, "a.test", { ocspUrls: ["http://127.0.0.1:99999/", ca.url] });
      const run = await runMain(site);
      assertEquals(run.code, 1, run.stdout + run.stderr);
      assertMatch(
        run.stderr,
        /WARNING: Attempt 1 of 1 at http:\/\/127\.0\.0\.1:99999\/ failed: "http:\/\/127\.0\.0\.1:99999\/" is not a usable URL$/m,
      );
    });
    await t.step("HTTP:// in capitals", async () => {
      await ca.issueLeaf(certs, "b.test", { ocspUrls: [ca.url.replace("http://", "HTTP://")] });
      const run = await runMain(site);
      assertEquals(run.code, 1, run.stdout + run.stderr);
    });
    const redirectTo = `${ca.url}ocsp/`;
    await t.step("a redirect, with the network allowed: followed, and said", async () => {
      await ca.issueLeaf(certs, "c.test");
      ca.mode = { redirect: redirectTo };
      // In-process, with the test's --allow-net=127.0.0.1.
      const run = await runMain(site);
      assertEquals(run.code, 1, run.stdout + run.stderr);
      assertMatch(
        run.stdout,
        new RegExp(
          `^\\[c\\.test\\] Responder ${ca.url} redirects to ${redirectTo}; following it`,
          "m",
        ),
      );
    });
    await t.step("a redirect, with no network allowed: what to do is said", async () => {
      const run = await runBot(site, ["--force", "--only", "c.test"]);
      ca.mode = "good";
      assertEquals(run.code, 255, run.stdout + run.stderr);
      assertMatch(
        run.stderr,
        /answered with an HTTP redirect; openssl does not follow redirects; run ocspbot with --allow-net=127\.0\.0\.1 .*set "ocsp_responder_uri" to where it points/,
      );
    });
  });
});

Deno.test("a corrupt or empty stored response is repaired", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    await Deno.mkdir(path.join(site, "responses"));
    for (const [name, bytes] of [["garbage", "not DER"], ["empty", ""]]) {
      await t.step(name, async () => {
        await Deno.writeTextFile(response(site, "a.test"), bytes);
        const run = await runMain(site);
        assertEquals(run.code, 1, run.stdout + run.stderr);
        assertMatch(run.stdout, /stored response does not verify/);
        assertEquals(
          await ca.verifiedStatus(response(site, "a.test"), path.join(site, "certs", "a.test.pem")),
          "good",
        );
      });
    }
  });
});

Deno.test("a response without nextUpdate is accepted and lives 12 hours", async () => {
  await withCa(async (ca) => {
    ca.validityMinutes = 0;
    const site = await makeSite(ca, ["a.test"], BASE_CONFIG.replace("6h", "1h"));
    const run = await runMain(site);
    assertEquals(run.code, 1, run.stderr);
    assertMatch(run.stdout, /no nextUpdate; it is treated as living 12 hours/);
    assertMatch(run.stdout, /nextUpdate none/);
    assertEquals((await runMain(site, [], fakeNow(10 * HOUR))).code, 0);
    assertEquals((await runMain(site, [], fakeNow(11.5 * HOUR))).code, 1);
  });
});

Deno.test("the replacement is a rename that keeps the file's mode", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    assertEquals((await runMain(site)).code, 1);
    await Deno.chmod(response(site, "a.test"), 0o640);
    const before = await Deno.stat(response(site, "a.test"));
    assertEquals((await runMain(site, [], fakeNow(19 * HOUR))).code, 1);
    const after = await Deno.stat(response(site, "a.test"));
    assertNotEquals(after.ino, before.ino, "a new inode means a rename, not a rewrite in place");
    assertEquals(after.mode! & 0o777, 0o640);
  });
});

Deno.test("a certificate without an OCSP URL is skipped quietly, not failed", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    await ca.issueLeaf(path.join(site, "certs"), "le.test", { ocspUrls: [] });
    const run = await runMain(site);
    assertEquals(run.code, 1, run.stderr);
    assertMatch(run.stdout, /^\[le\.test\] Certificate ".*" names no OCSP responder .*skipped$/m);
    assertEquals(run.stderr, "", "cron would mail a warning every hour");
    assertMatch(run.stdout, /1 certificates skipped \(no OCSP URL\)/);
  });
});

Deno.test("scan_keys finds triples flat or recursively, whole names only", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["top.test"], BASE_CONFIG + "    recursive: no\n");
    await ca.issueLeaf(path.join(site, "certs", "deep", "er"), "sub.test");
    await Deno.copyFile(
      path.join(site, "certs", "top.test.pem"),
      path.join(site, "certs", "top.test.pem.bak"),
    );
    // A cert without its chain files is no triple.
    await Deno.copyFile(
      path.join(site, "certs", "top.test.pem"),
      path.join(site, "certs", "lonely.pem"),
    );

    const flat = await runMain(site);
    assertEquals(flat.code, 1, flat.stdout + flat.stderr);
    assert(!flat.stdout.includes("sub.test"), "recursive: no still descended");

    await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), BASE_CONFIG);
    const deep = await runMain(site);
    assertEquals(deep.code, 1, deep.stdout + deep.stderr);
    assert(await exists(path.join(site, "responses", "deep", "er", "sub.test.ocsp-resp")));
  });
});

Deno.test("explicit domains and the responder override work; ids are unique", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    const domains = `domains:
  explicit:
    cert: certs/a.test.pem
    chain: certs/a.test-chain.pem
    rootchain: certs/a.test-rootchain.pem
    ocsp: nested/folder/explicit.der
    ocsp_responder_uri: ${ca.url}
`;
    await Deno.writeTextFile(
      path.join(site, "ocspbot.yaml"),
      "minimum_validity: 6h\nocsp_folder: responses\n" + domains,
    );
    const run = await runMain(site);
    assertEquals(run.code, 1, run.stderr);
    assert(await exists(path.join(site, "responses", "nested", "folder", "explicit.der")));

    await Deno.writeTextFile(
      path.join(site, "ocspbot.yaml"),
      BASE_CONFIG + domains.replace("explicit:", "a.test:"),
    );
    const twice = await runMain(site);
    assertEquals(twice.code, 253);
    assertMatch(twice.stderr, /Certificate id "a\.test" appears twice/);
  });
});

Deno.test("includes are read from their folder wherever the bot starts", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test", "b.test"], "");
    const certs = path.join(site, "certs");
    const includeDir = path.join(site, "conf.d");
    await Deno.mkdir(includeDir);
    await Deno.writeTextFile(
      path.join(includeDir, "10-a.yaml"),
      `domains:\n  a.test:\n    cert: ${certs}/a.test.pem\n    chain: ${certs}/a.test-chain.pem\n    rootchain: ${certs}/a.test-rootchain.pem\n    ocsp: a.der\n`,
    );
    await Deno.writeTextFile(
      path.join(includeDir, "20-b.yml"),
      `scan_keys:\n  - folder: ${certs}\n    cert_mask: "{domain}.pem"\n    ocsp_mask: "{domain}.der"\n`,
    );
    await Deno.writeTextFile(path.join(includeDir, "README.txt"), "not yaml");
    const elsewhere = path.join(ca.dir, "elsewhere");
    await Deno.mkdir(elsewhere);
    const config = path.join(elsewhere, "main.yaml");
    const mainConfig =
      `minimum_validity: 6h\nocsp_folder: ${site}/responses\nincludes:\n  - ${includeDir}\n`;
    await Deno.writeTextFile(config, mainConfig);
    const run = await runMain(elsewhere, ["main.yaml"]);
    // scan_keys finds both a.test and b.test; a.test is also in domains: that include's is left out.
    assertEquals(run.code, 255, run.stdout + run.stderr);
    assertMatch(
      run.stderr,
      /Certificate id "a\.test" appears twice: .*; the one of domains of config ".*10-a\.yaml" is left out/,
    );

    await Deno.writeTextFile(
      path.join(includeDir, "20-b.yml"),
      `scan_keys:\n  - folder: ${certs}\n    cert_mask: "b{domain}.pem"\n    chain_mask: "b{domain}-chain.pem"\n    rootchain_mask: "b{domain}-rootchain.pem"\n    ocsp_mask: "b{domain}.der"\n`,
    );
    await Deno.writeTextFile(config, `${mainConfig}  - ${site}/missing.d\n`);
    const missing = await runMain(elsewhere, ["main.yaml"]);
    assertEquals(missing.code, 253, missing.stdout + missing.stderr);
    assertMatch(
      missing.stderr,
      /^ERROR: Config "main\.yaml": include folder ".*missing\.d" does not exist; fix or remove it/m,
    );
    assert(!(await exists(path.join(site, "responses", "a.der"))), "a broken config fetched");

    await Deno.writeTextFile(config, mainConfig);
    const fixed = await runMain(elsewhere, ["main.yaml"]);
    // b.test.der was renewed by the first run already, beside the include left out.
    assertEquals(fixed.code, 1, fixed.stdout + fixed.stderr);
    assert(await exists(path.join(site, "responses", "a.der")));
    assert(await exists(path.join(site, "responses", "b.test.der")));
  });
});

Deno.test("an include writes only inside ocsp_folder; the main config anywhere", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"], "");
    const certs = path.join(site, "certs");
    const includeDir = path.join(site, "conf.d");
    await Deno.mkdir(includeDir);
    const appConf = path.join(site, "etc", "app.conf");
    await writeWithFolders(appConf, "setting = precious\n");
    const files = `    cert: ${certs}/a.test.pem\n    chain: ${certs}/a.test-chain.pem\n` +
      `    rootchain: ${certs}/a.test-rootchain.pem\n`;
    const mainConfig = `minimum_validity: 6h\nocsp_folder: responses\nincludes: [conf.d]\n`;
    await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), mainConfig);
    const cases: [string, string, RegExp][] = [
      [
        "domains' ocsp climbing out",
        `domains:\n  a.test:\n${files}    ocsp: ../etc/app.conf\n`,
        /"domains\.a\.test\.ocsp" names "\.\.\/etc\/app\.conf", which lies outside ocsp_folder/,
      ],
      [
        "domains' ocsp absolute",
        `domains:\n  a.test:\n${files}    ocsp: ${appConf}\n`,
        /"domains\.a\.test\.ocsp" names ".*app\.conf", which lies outside ocsp_folder/,
      ],
      [
        "scan_keys' ocsp_mask climbing out",
        `scan_keys:\n  - folder: ${certs}\n    ocsp_mask: "../etc/{domain}.conf"\n`,
        /"scan_keys\[0\]\.ocsp_mask" \("\.\.\/etc\/\{domain\}\.conf"\) puts the response of "a\.test" at ".*", which lies outside ocsp_folder/,
      ],
    ];
    for (const [name, include, message] of cases) {
      await t.step(`${name}: 255, naming the include and the key`, async () => {
        await Deno.writeTextFile(path.join(includeDir, "team.yaml"), include);
        const run = await runMain(site);
        assertEquals(run.code, 255, run.stdout + run.stderr);
        assertMatch(run.stderr, /^ERROR: ".*" of include "conf\.d\/team\.yaml" is left out, /m);
        assertMatch(run.stderr, message);
        assertEquals(await Deno.readTextFile(appConf), "setting = precious\n");
      });
    }
    await t.step("the main config keeps the Python bot's meaning: any path", async () => {
      await Deno.remove(path.join(includeDir, "team.yaml"));
      const elsewhere = path.join(site, "elsewhere", "a.der");
      await Deno.writeTextFile(
        path.join(site, "ocspbot.yaml"),
        `${mainConfig}domains:\n  a.test:\n${files}    ocsp: ${elsewhere}\n`,
      );
      const run = await runMain(site);
      assertEquals(run.code, 1, run.stdout + run.stderr);
      assertEquals(await ca.verifiedStatus(elsewhere, path.join(certs, "a.test.pem")), "good");
    });
  });
});

Deno.test("printable() escapes what could end a line and forge another", async (t) => {
  const cases: [string, string][] = [
    ["[x\nevil::0:0:::\ny] fine", "[x\\nevil::0:0:::\\ny] fine"],
    ["carriage\rreturn", "carriage\\rreturn"],
    ["tab\tand bell\x07", "tab\\tand bell\\x07"],
    ["next line\u0085 and separator\u2028", "next line\\x85 and separator\\u2028"],
    ["plain ümlaut.test", "plain ümlaut.test"],
  ];
  for (const [line, shown] of cases) {
    await t.step(JSON.stringify(line), () => assertEquals(printable(line), shown));
  }
});

Deno.test("an id or file name with a newline cannot forge a log line", async () => {
  await withCa(async (ca) => {
    const forged = "x\nevil::0:0:::\ny";
    const site = await makeSite(ca, [forged]);
    const lines = (run: { stdout: string; stderr: string }) =>
      (run.stdout + run.stderr).split("\n").filter(Boolean);
    const first = await runMain(site);
    assertEquals(first.code, 1, first.stdout + first.stderr);
    assert(!lines(first).includes("evil::0:0:::"), first.stdout);
    assertMatch(first.stdout, /^\[x\\nevil::0:0:::\\ny\] Stored new OCSP response/m);
    const check = await runMain(site, ["--check"]);
    assertEquals(check.code, 0, check.stdout + check.stderr);
    for (const line of lines(check)) assertMatch(line, /^(\[x\\nevil::0:0:::\\ny\] |OCSP OK)/);
    const report = JSON.parse((await runMain(site, ["--check", "--json"])).stdout);
    assertEquals(Object.keys(report.certificates), [forged]);
  });
});

Deno.test("backups copy each new response under a local-time name", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "make_backups: yes\n");
    const now = clockAhead(HOUR);
    const env = { TZ: "Asia/Kolkata", OCSPBOT_FAKE_NOW: now.toISOString() };
    assertEquals((await runMain(site, [], env)).code, 1);
    const backup = `${response(site, "a.test")}-${wallClockStamp(now, 5.5)}`;
    assertEquals(await Deno.readFile(backup), await Deno.readFile(response(site, "a.test")));
  });
});

Deno.test("logs go to files named by the placeholders, appended, errors in both", async () => {
  await withCa(async (ca) => {
    const config = BASE_CONFIG +
      "output_log: logs/out-{year}{month}{day}-{hour}{minute}{second}.log\nerror_log: logs/err-{year}.log\n" +
      "make_backup: yes\n";
    const site = await makeSite(ca, ["a.test"], config);
    const now = clockAhead(HOUR);
    const env = { TZ: "UTC", OCSPBOT_FAKE_NOW: now.toISOString() };
    const first = await runMain(site, [], env);
    assertEquals(first.code, 1, first.stderr);
    assertEquals(first.stdout + first.stderr, "");
    const second = await runMain(site, [], env);
    assertEquals(second.code, 0);
    const out = await Deno.readTextFile(
      path.join(site, "logs", `out-${wallClockStamp(now)}.log`),
    );
    const err = await Deno.readTextFile(
      path.join(site, "logs", `err-${now.getUTCFullYear()}.log`),
    );
    assertEquals(out.match(/^Success:/gm)?.length, 2, "the second run truncated the log");
    assertEquals(err.match(/^WARNING: Config .*unknown key "make_backup"/gm)?.length, 2);
    assertEquals(
      out.match(/^WARNING: Config .*unknown key "make_backup"/gm)?.length,
      2,
      "warnings belong in the output log too",
    );
    assert(!/Success:/.test(err), "the error log holds only warnings and errors");
  });
});

Deno.test("22 certificates with parallel_threads 8; stop_on_error stops without hanging", async () => {
  await withCa(async (ca) => {
    const names = Array.from({ length: 22 }, (_, i) => `host${String(i).padStart(2, "0")}.test`);
    const site = await makeSite(ca, names, BASE_CONFIG + "parallel_threads: 8\n");
    const run = await runMain(site);
    assertEquals(run.code, 22, run.stderr);
    assertMatch(run.stdout, /0 unchanged OCSP responses, 22 updated OCSP responses and 0 failures/);
    for (const name of names) assert(await exists(response(site, name)), name);

    ca.mode = "http500";
    await Deno.writeTextFile(
      path.join(site, "ocspbot.yaml"),
      BASE_CONFIG + "parallel_threads: 4\nstop_on_error: on\nretries: 0\n",
    );
    const stopped = await runMain(site, [], fakeNow(19 * HOUR));
    assertEquals(stopped.code, 255);
    const failures = stopped.stderr.match(/ERROR:/g)?.length ?? 0;
    assert(failures >= 1 && failures <= 4, `${failures} failures: in-flight work only`);
    assertMatch(
      stopped.stdout,
      new RegExp(`${22 - failures} certificates not processed \\(stop_on_error\\)`),
    );
  });
});

Deno.test("config errors end with the documented exit status", async (t) => {
  await withTempDir("ocspbot-config-", async (dir) => {
    await Deno.mkdir(path.join(dir, "certs"));
    await Deno.mkdir(path.join(dir, "responses", "a.der"), { recursive: true });
    for (const name of ["a.pem", "a-chain.pem", "a-rootchain.pem"]) {
      await Deno.writeTextFile(path.join(dir, "certs", name), "");
    }
    const domain = (ocsp: string, cert = "certs/a.pem") =>
      `minimum_validity: 1d\ndomains:\n  a:\n    cert: ${cert}\n    chain: certs/a-chain.pem\n    rootchain: certs/a-rootchain.pem\n    ocsp: ${ocsp}\n`;
    const cases: [string, string | null, string[], number, RegExp][] = [
      [
        "two positional arguments",
        null,
        ["a.yaml", "b.yaml"],
        252,
        /at most one config file[\s\S]*Usage:/,
      ],
      ["an unknown option", null, ["--frobnicate"], 252, /Unknown option "--frobnicate"/],
      [
        "a missing config",
        null,
        ["nope.yaml"],
        254,
        /Cannot read config "nope\.yaml": No such file/,
      ],
      ["YAML that does not parse", "a: [1, 2\n", [], 254, /Cannot parse config "ocspbot\.yaml"/],
      ["an empty config", "", [], 253, /Config "ocspbot\.yaml" is empty/],
      ["a compact interval", "minimum_validity: 1h30m\n", [], 0, /Success: 0 unchanged/],
      ["a bad interval", "minimum_validity: soon\n", [], 253, /"minimum_validity"/],
      ["a bad percentage", "minimum_validity_percentage: 120\n", [], 253, /between 0 and 100/],
      [
        "threads as text",
        "minimum_validity: 1d\nparallel_threads: many\n",
        [],
        253,
        /"parallel_threads"/,
      ],
      [
        "a missing cert",
        domain("a.der", "certs/none.pem"),
        [],
        253,
        /"domains\.a\.cert" names "certs\/none\.pem"/,
      ],
      [
        "a scan folder that does not exist",
        "minimum_validity: 1d\nscan_keys:\n  - folder: typo\n",
        [],
        253,
        /Cannot scan scan_keys folder "typo".*does not exist/,
      ],
      [
        "a log that cannot be opened",
        "minimum_validity: 1d\noutput_log: certs/a.pem/x.log\n",
        [],
        // Its lines go to the console; the run goes on, and "nothing renewed" cannot hide it.
        255,
        /^ERROR: Cannot open output_log "certs\/a\.pem\/x\.log" .*; its lines go to stdout instead/m,
      ],
      [
        "a log name with an unknown placeholder",
        "minimum_validity: 1d\noutput_log: logs/{nope}.log\n",
        [],
        254,
        /^ERROR: Config "ocspbot\.yaml": "output_log" has the unknown placeholder "\{nope\}" \(known: \{year\}/m,
      ],
      [
        "an ocsp_folder that is a file",
        "minimum_validity: 1d\nocsp_folder: certs/a.pem\n",
        [],
        255,
        /^ERROR: Cannot open the lock file "certs\/a\.pem\/\.ocspbot-state\.json\.lock": ".*\/certs\/a\.pem" is a file, not a folder; the folder must exist as a folder/m,
      ],
      [
        "an include that is a file",
        "minimum_validity: 1d\nincludes: [certs/a.pem]\n",
        [],
        253,
        /include folder "certs\/a\.pem" is not a folder/,
      ],
      [
        "an unknown key",
        "minimum_validity: 1d\nmake_backup: yes\n",
        [],
        0,
        /WARNING: .*unknown key "make_backup".*"make_backups"/,
      ],
      [
        "a repeated key: the last counts, as in PyYAML",
        "minimum_validity: soon\nminimum_validity: 1d\n",
        [],
        0,
        /WARNING: .*a key appears twice; the last one counts/,
      ],
    ];
    for (const [name, config, args, status, message] of cases) {
      await t.step(name, async () => {
        if (config !== null) await Deno.writeTextFile(path.join(dir, "ocspbot.yaml"), config);
        const run = await runBot(dir, args);
        assertEquals(run.code, status, run.stdout + run.stderr);
        assertMatch(run.stdout + run.stderr, message);
        assert(!/^\s+at /m.test(run.stderr), `a stack trace reached the user:\n${run.stderr}`);
      });
    }
  });
});

Deno.test("help and version win wherever they stand", async () => {
  await withTempDir("ocspbot-help-", async (dir) => {
    const help = await runBot(dir, ["a", "b", "-help"]);
    assertEquals(help.code, 0);
    assertMatch(help.stdout, /Usage: ocspbot \[config\]/);
    assertMatch(help.stdout, /255 +a certificate or on_change failed/);
    assertMatch(help.stdout, /--check +decide and report/);
    const version = await runBot(dir, ["x.yaml", "-v"]);
    assertEquals(version.code, 0);
    assertEquals(version.stdout, `ocspbot ${VERSION}\n`);
  });
});

Deno.test("a missing openssl executable is named in the error", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(
      ca,
      ["a.test"],
      BASE_CONFIG + "openssl_executable: /nonexistent/openssl\n",
    );
    const run = await runMain(site);
    assertEquals(run.code, 255);
    assertMatch(run.stderr, /Cannot find openssl executable "\/nonexistent\/openssl"/);
  });
});

Deno.test("the script runs by URL", async () => {
  const root = import.meta.dirname!;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (request) => {
    const name = new URL(request.url).pathname.slice(1);
    if (name !== "ocspbot.ts") return new Response("not found", { status: 404 });
    return new Response(await Deno.readFile(path.join(root, name)), {
      headers: { "content-type": "application/typescript" },
    });
  });
  try {
    await withTempDir("ocspbot-url-", async (cwd) => {
      const url = `http://127.0.0.1:${server.addr.port}/ocspbot.ts`;
      const output = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--quiet", "--allow-import=127.0.0.1", ...BOT_PERMISSIONS, url, "--version"],
        cwd,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      assertEquals(
        decoder.decode(output.stdout),
        `ocspbot ${VERSION}\n`,
        decoder.decode(output.stderr),
      );
      assertEquals(output.code, 0);
    });
  } finally {
    await server.shutdown();
  }
});

// --------------------------------------------------- operations (issue 4) --

Deno.test("an offline server without js-yaml cached: 254 and what to do, not Deno's 1", async () => {
  await withTempDir("ocspbot-offline-", async (dir) => {
    await Deno.writeTextFile(path.join(dir, "ocspbot.yaml"), "minimum_validity: 1d\n");
    // An empty module cache, and a registry on a closed loopback port: nothing leaves the host.
    const env = { DENO_DIR: path.join(dir, "cache"), NPM_CONFIG_REGISTRY: "http://127.0.0.1:9/" };
    const run = await runBot(dir, [], env);
    assertEquals(run.code, 254, run.stdout + run.stderr);
    assertMatch(
      run.stderr,
      /^ERROR: Cannot load the YAML parser \(npm:js-yaml\): .*; run "deno cache" on ocspbot\.ts once/m,
    );
    const check = await runBot(dir, ["--check"], env);
    assertEquals(check.code, 3, check.stdout + check.stderr);
  });
});

Deno.test("--check reports like a Nagios plugin and changes nothing", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test", "b.test"]);
    const staple = await ca.issueLeaf(path.join(site, "certs"), "staple.test", {
      mustStaple: true,
    });
    assertEquals((await runMain(site)).code, 3);
    const requests = ca.hostHeaders.length;
    const state = path.join(site, "responses", ".ocspbot-state.json");
    const stateBefore = await Deno.readTextFile(state);

    await t.step("all fresh: OK, 0", async () => {
      const run = await runMain(site, ["--check"]);
      assertEquals(run.code, 0, run.stdout + run.stderr);
      assertMatch(
        run.stdout,
        /^OCSP OK - 3 responses fresh, soonest expiry in 23h 5\dm \| soonest_expiry=8\d{4}s;21600;10800;0 fresh=3 due=0 failing=0 critical=0 skipped=0$/m,
      );
      assertMatch(
        run.stdout,
        /^\[staple\.test\] good, nextUpdate .* left\), renewal at .*: fresh, must-staple$/m,
      );
    });
    await t.step("due: WARNING, 1, but a due must-staple one is CRITICAL, 2", async () => {
      await Deno.remove(staple.cert);
      const warn = await runMain(site, ["--check"], fakeNow(19 * HOUR));
      assertEquals(warn.code, 1, warn.stdout + warn.stderr);
      assertMatch(
        warn.stdout,
        /^OCSP WARNING - 2 of 2 responses due for renewal \(a\.test, b\.test\)/m,
      );
    });
    await t.step("a missing response is CRITICAL, 2, and names the id", async () => {
      await Deno.rename(response(site, "b.test"), response(site, "b.test") + ".moved");
      const run = await runMain(site, ["--check"]);
      assertEquals(run.code, 2, run.stdout);
      assertMatch(
        run.stdout,
        /^OCSP CRITICAL - 1 of 2 critical \(b\.test\)/m,
      );
      await Deno.rename(response(site, "b.test") + ".moved", response(site, "b.test"));
    });
    await t.step("--force does not make --check see anything due", async () => {
      const run = await runMain(site, ["--check", "--force"]);
      assertEquals(run.code, 0, run.stdout);
    });
    await t.step("-q keeps only the verdict", async () => {
      const run = await runMain(site, ["--check", "-q"]);
      assertEquals(run.code, 0);
      assertEquals(run.stdout.trim().split("\n").length, 1, run.stdout);
    });
    await t.step("a config error is UNKNOWN, 3", async () => {
      const run = await runMain(site, ["--check", "missing.yaml"]);
      assertEquals(run.code, 3);
      assertMatch(run.stdout, /^OCSP UNKNOWN - Cannot read config "missing\.yaml"/m);
    });
    assertEquals(ca.hostHeaders.length, requests, "--check asked a responder");
    assertEquals(await Deno.readTextFile(state), stateBefore, "--check changed the state");
  });
});

Deno.test("a must-staple problem is always CRITICAL", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, []);
    await ca.issueLeaf(path.join(site, "certs"), "staple.test", { mustStaple: true });
    assertEquals((await runMain(site)).code, 1);
    const run = await runMain(site, ["--check"], fakeNow(19 * HOUR));
    assertEquals(run.code, 2, run.stdout);
    assertMatch(run.stdout, /: CRITICAL, must-staple$/m);
  });
});

Deno.test("--json prints one parseable document; logs stay off stdout", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    await ca.issueLeaf(path.join(site, "certs"), "le.test", { ocspUrls: [] });
    await t.step("a run", async () => {
      const run = await runMain(site, ["--json"]);
      assertEquals(run.code, 1, run.stderr);
      const report = JSON.parse(run.stdout);
      assertEquals(report.mode, "run");
      assertEquals(report.status, 1);
      assertEquals(report.totals, {
        renewed: 1,
        unchanged: 0,
        skipped: 1,
        failed: 0,
        notProcessed: 0,
      });
      const a = report.certificates["a.test"];
      assertEquals([a.action, a.status, a.responderUrl, a.mustStaple, a.error], [
        "renewed",
        "good",
        ca.url,
        false,
        null,
      ]);
      assertEquals(a.response, response(site, "a.test"));
      assert(
        new Date(a.renewalTime) > new Date(a.thisUpdate) &&
          new Date(a.renewalTime) < new Date(a.nextUpdate),
      );
      assertEquals(report.certificates["le.test"].action, "skipped");
      assertMatch(run.stderr, /Success: 0 unchanged OCSP responses, 1 updated/);
    });
    await t.step("with --check", async () => {
      const run = await runMain(site, ["--check", "--json"]);
      assertEquals(run.code, 0);
      const report = JSON.parse(run.stdout);
      assertEquals(report.mode, "check");
      assertEquals(report.certificates["a.test"].health, "fresh");
      assertEquals(report.totals, { fresh: 1, due: 0, failing: 0, critical: 0, skipped: 1 });
      assertMatch(run.stderr, /^OCSP OK/m);
    });
  });
});

Deno.test("-q prints nothing on a quiet hour, and still every warning", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    assertEquals((await runMain(site)).code, 1);
    // Public CAs' certificates name no responder any more: skipped, quietly.
    await ca.issueLeaf(path.join(site, "certs"), "le.test", { ocspUrls: [] });
    const quiet = await runMain(site, ["-q"]);
    assertEquals([quiet.code, quiet.stdout, quiet.stderr], [0, "", ""]);
    await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), BASE_CONFIG + "make_backup: yes\n");
    const warned = await runMain(site, ["--quiet"]);
    assertEquals(warned.stdout, "");
    assertMatch(warned.stderr, /^WARNING: Config "ocspbot\.yaml": unknown key "make_backup"/m);
  });
});

Deno.test("--force renews everything the run covers; --only narrows it, in any order", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test", "b.test"]);
    assertEquals((await runMain(site)).code, 2);
    const cases: [string[], number][] = [
      [["--force", "ocspbot.yaml"], 2],
      [["ocspbot.yaml", "--force"], 2],
      [["--only", "b.test", "--force", "ocspbot.yaml"], 1],
      [["--force", "--only=a.test", "--only", "b.test"], 2],
      [["--only", "b.test"], 0],
    ];
    for (const [args, renewed] of cases) {
      await t.step(args.join(" "), async () => {
        const run = await runMain(site, args);
        assertEquals(run.code, renewed, run.stdout + run.stderr);
        if (renewed > 0) assertMatch(run.stdout, /renewal forced \(--force\)/);
        if (!args.some((arg) => arg.includes("a.test")) && args.includes("b.test")) {
          assert(!/\[a\.test\]/.test(run.stdout), run.stdout);
        }
      });
    }
    await t.step("an unknown id is 252, for a run and for --check", async () => {
      const unknown = await runMain(site, ["--force", "--only", "c.test"]);
      assertEquals(unknown.code, 252);
      assertMatch(
        unknown.stderr,
        /--only names certificate ids that are not configured: "c\.test"/,
      );
      const check = await runMain(site, ["--check", "--only", "c.test"]);
      assertEquals(check.code, 3, check.stdout);
      assertMatch(check.stdout, /^OCSP UNKNOWN - --only names certificate ids/m);
    });
    await t.step("the old form reads the id as a config file", async () => {
      const old = await runMain(site, ["--force", "b.test"]);
      assertEquals(old.code, 254, old.stderr);
      assertMatch(old.stderr, /Cannot read config "b\.test"/);
    });
  });
});

Deno.test("overlapping runs: the second waits, gives up naming the lock, and a dead holder frees it", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(
      ca,
      ["a.test"],
      BASE_CONFIG + "timeout: 20\nretries: 0\nlock_timeout: 1\n",
    );
    ca.mode = "hang";
    const holder = new Deno.Command(Deno.execPath(), {
      args: ["run", "--quiet", ...BOT_PERMISSIONS, BOT],
      cwd: site,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      while (ca.hostHeaders.length === 0) await new Promise((resolve) => setTimeout(resolve, 50));
      const started = Date.now();
      const second = await runBot(site);
      assertEquals(second.code, 255);
      assertMatch(
        second.stderr,
        /Another ocspbot run holds the lock ".*\.ocspbot-state\.json\.lock"; gave up after 1 s/,
      );
      assert(Date.now() - started < 10_000);
    } finally {
      holder.kill("SIGKILL");
      await holder.status;
    }
    ca.mode = "good";
    const third = await runBot(site);
    assertEquals(third.code, 1, third.stderr);
  });
});

Deno.test("on_change runs once after renewals, with the ids; its failure is an error", async () => {
  await withCa(async (ca) => {
    const marker = path.join(ca.dir, "renewed.txt");
    const hook = `on_change: [sh, -c, 'echo "$OCSPBOT_RENEWED" >> ${marker}']\n`;
    const site = await makeSite(ca, ["a.test", "b.test"], BASE_CONFIG + hook);
    assertEquals((await runMain(site)).code, 2);
    const ids = (await Deno.readTextFile(marker)).trim().split(" ").sort();
    assertEquals(ids, ["a.test", "b.test"]);
    await runMain(site);
    assertEquals(
      (await Deno.readTextFile(marker)).trim().split("\n").length,
      1,
      "ran without a renewal",
    );

    await Deno.writeTextFile(
      path.join(site, "ocspbot.yaml"),
      BASE_CONFIG + "on_change: [sh, -c, 'echo nope >&2; exit 3']\n",
    );
    const failed = await runMain(site, ["--force", "--only", "a.test"]);
    assertEquals(failed.code, 255);
    assertMatch(
      failed.stderr,
      /ERROR: on_change command \["sh","-c",.*\] failed with exit status 3: nope; the renewed responses stay in place/,
    );
    assertMatch(
      failed.stdout,
      /^Failure: .* 1 updated OCSP responses .*The on_change command failed\.$/m,
    );
    assertEquals(
      await ca.verifiedStatus(response(site, "a.test"), path.join(site, "certs", "a.test.pem")),
      "good",
    );
  });
});

Deno.test("keep_backups keeps the newest backups of each response", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(
      ca,
      ["a.test"],
      BASE_CONFIG + "make_backups: true\nkeep_backups: 2\n",
    );
    const start = clockAhead(HOUR);
    const runTimes = [1, 2, 3, 4].map((second) => new Date(start.getTime() + second * 1000));
    for (const time of runTimes) {
      const env = { TZ: "UTC", OCSPBOT_FAKE_NOW: time.toISOString() };
      assertEquals((await runMain(site, ["--force"], env)).code, 1);
    }
    const backups = [...Deno.readDirSync(path.join(site, "responses"))]
      .map((entry) => entry.name).filter((name) => name.startsWith("a.test.ocsp-resp-")).sort();
    assertEquals(
      backups,
      runTimes.slice(2).map((time) => `a.test.ocsp-resp-${wallClockStamp(time)}`),
    );
  });
});

Deno.test("retries with backoff, and every AIA URL in order", async (t) => {
  await withCa(async (ca) => {
    await t.step("a failing first answer is retried", async () => {
      const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "retries: 1\n");
      ca.failNextRequests = 1;
      const run = await runMain(site);
      assertEquals(run.code, 1, run.stderr);
      assertMatch(run.stderr, /WARNING: Attempt 1 of 2 at .* failed: No response from .*code=500/);
      ca.failNextRequests = 1;
      await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), BASE_CONFIG + "retries: 0\n");
      assertEquals((await runMain(site, ["--force"])).code, 255);
      await Deno.remove(site, { recursive: true });
    });
    await t.step("a dead first URL falls through to the next", async () => {
      const site = await makeSite(ca, [], BASE_CONFIG + "timeout: 1\nretries: 0\n");
      await ca.issueLeaf(path.join(site, "certs"), "two.test", {
        ocspUrls: ["http://127.0.0.1:9/", ca.url],
      });
      const run = await runMain(site);
      assertEquals(run.code, 1, run.stderr);
      assertMatch(run.stderr, /Attempt 1 of 1 at http:\/\/127\.0\.0\.1:9\/ failed/);
      const report = JSON.parse((await runMain(site, ["--force", "--json"])).stdout);
      assertEquals(report.certificates["two.test"].responderUrl, ca.url);
      await Deno.remove(site, { recursive: true });
    });
  });
});

Deno.test("a response path that is a symlink stays a link; its final target is replaced", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    const shared = path.join(site, "shared");
    const target = path.join(shared, "a.der");
    const cert = path.join(site, "certs", "a.test.pem");
    await Deno.mkdir(shared);
    await Deno.mkdir(path.join(site, "responses"));
    // Relative, as `ln -s ../shared/a.der` makes it, through a second link.
    await Deno.symlink("a.der", path.join(shared, "current.der"));
    await Deno.symlink("../shared/current.der", response(site, "a.test"));
    const link = await Deno.readLink(response(site, "a.test"));

    const first = await runMain(site);
    assertEquals(first.code, 1, first.stderr);
    const stored = await Deno.readFile(target);
    assertEquals(await ca.verifiedStatus(target, cert), "good");

    const forced = await runMain(site, ["--force"], fakeNow(HOUR));
    assertEquals(forced.code, 1, forced.stderr);
    assert((await Deno.lstat(response(site, "a.test"))).isSymlink, "the link became a file");
    assert((await Deno.lstat(path.join(shared, "current.der"))).isSymlink);
    assertEquals(await Deno.readLink(response(site, "a.test")), link);
    assertNotEquals(await Deno.readFile(target), stored, "the target was not renewed");
    assertEquals(await ca.verifiedStatus(target, cert), "good");
    const left = [...Deno.readDirSync(shared)].map((entry) => entry.name).sort();
    assertEquals(left, ["a.der", "current.der"], "a temporary file was left behind");

    const check = await runMain(site, ["--check"], fakeNow(HOUR));
    assertEquals(check.code, 0, check.stdout);
  });
});

Deno.test("OCSP error statuses are named as answers, retried only when it can help", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "retries: 1\n");
    const cases: [string, number, number][] = [
      ["tryLater", 3, 2],
      ["internalError", 2, 2],
      ["unauthorized", 6, 1],
      ["malformedRequest", 1, 1],
    ];
    for (const [name, code, requests] of cases) {
      await t.step(`${name}: ${requests} request(s)`, async () => {
        ca.mode = { fixed: new Uint8Array([0x30, 0x03, 0x0a, 0x01, code]) };
        const asked = ca.hostHeaders.length;
        // Past the first 15 minutes, when "unauthorized" may only mean "not known yet".
        const run = await runMain(site, [], fakeNow(20 * 60_000));
        assertEquals(run.code, 255, run.stderr);
        assertEquals(ca.hostHeaders.length - asked, requests);
        assertMatch(
          run.stderr,
          new RegExp(
            `^\\[a\\.test\\] ERROR: responder answered "${name}" \\(OCSP response status ${code}\\) instead of a response; nothing is stored, the answer is in ".*/\\.a\\.test\\.ocsp-resp\\.rejected" for inspection$`,
            "m",
          ),
        );
        assert(!/does not verify/.test(run.stderr), run.stderr);
        const names = [...Deno.readDirSync(path.join(site, "responses"))].map((entry) =>
          entry.name
        );
        assert(names.every((entry) => entry.startsWith(".")), `a visible file was left: ${names}`);
      });
    }
    ca.mode = "good";
    const fixed = await runMain(site);
    assertEquals(fixed.code, 1, fixed.stderr);
    assert(
      !(await exists(rejectedPath(response(site, "a.test")))),
      "the old rejected answer stayed",
    );
  });
});

Deno.test("an expired certificate is skipped without asking, every run, and CRITICAL in --check", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, []);
    await ca.issueLeaf(path.join(site, "certs"), "old.test", { days: 1 });
    assertEquals((await runMain(site)).code, 1);
    const asked = ca.hostHeaders.length;
    const later = fakeNow(25 * HOUR);
    for (const run of [await runMain(site, [], later), await runMain(site, [], later)]) {
      assertEquals(run.code, 0, run.stdout + run.stderr);
      assertMatch(
        run.stderr,
        /^\[old\.test\] WARNING: Certificate ".*old\.test\.pem" expired on \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC; skipped, no responder asked/m,
      );
      assertMatch(run.stdout, /0 failures\. 1 certificates skipped \(expired\)\.$/m);
    }
    assertEquals(
      ca.hostHeaders.length,
      asked,
      "a responder was asked about an expired certificate",
    );
    const check = await runMain(site, ["--check"], later);
    assertEquals(check.code, 2, check.stdout);
    assertMatch(check.stdout, /^\[old\.test\] certificate expired on .*: CRITICAL$/m);
  });
});

Deno.test("an expired certificate without an OCSP URL has one answer: expired, in a run and in --check", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, []);
    await ca.issueLeaf(path.join(site, "certs"), "old.test", { days: 1, ocspUrls: [] });
    const later = fakeNow(25 * HOUR);
    const run = await runMain(site, [], later);
    assertEquals(run.code, 0, run.stdout + run.stderr);
    assertMatch(
      run.stderr,
      /^\[old\.test\] WARNING: Certificate ".*" expired on .*renew the certificate$/m,
    );
    assertMatch(run.stdout, /1 certificates skipped \(expired\)\.$/m);
    const check = await runMain(site, ["--check"], later);
    assertEquals(check.code, 2, check.stdout + check.stderr);
    assertMatch(check.stdout, /^\[old\.test\] certificate expired on .*: CRITICAL$/m);
  });
});

Deno.test("backup_folder takes the backups, mirroring the response folders", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, []);
    await Deno.writeTextFile(
      path.join(site, "ocspbot.yaml"),
      BASE_CONFIG + `make_backups: true\nkeep_backups: 2\nbackup_folder: ${site}/old\n`,
    );
    await ca.issueLeaf(path.join(site, "certs", "sub"), "a.test");
    const start = clockAhead(HOUR);
    for (const second of [1, 2, 3]) {
      const env = { OCSPBOT_FAKE_NOW: new Date(start.getTime() + second * 1000).toISOString() };
      const run = await runMain(site, ["--force"], env);
      assertEquals(run.code, 1, run.stderr);
      assertMatch(run.stdout, /backup ".*\/old\/sub\/a\.test\.ocsp-resp-\d{8}-\d{6}"/);
    }
    const backups = [...Deno.readDirSync(path.join(site, "old", "sub"))].map((e) => e.name);
    assertEquals(backups.length, 2, `keep_backups in backup_folder: ${backups}`);
    const beside = [...Deno.readDirSync(path.join(site, "responses", "sub"))].map((e) => e.name);
    assertEquals(beside, ["a.test.ocsp-resp"]);
    const newest = backups.sort().at(-1)!;
    assertEquals(
      await Deno.readFile(path.join(site, "old", "sub", newest)),
      await Deno.readFile(path.join(site, "responses", "sub", "a.test.ocsp-resp")),
    );
  });
});

Deno.test("output that cannot be written never reads as renewals: /dev/full, a closed pipe", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "timeout: 2\nretries: 0\n");
    const cert = path.join(site, "certs", "a.test.pem");
    const cases: [string, string, RegExp][] = [
      ["stdout is /dev/full", "> /dev/full", /No space left on device/],
      ["stdout's reader has gone", "| true", /Broken pipe/],
    ];
    for (const [name, redirection, cause] of cases) {
      const saidOnce = (stderr: string) => {
        const said = stderr.split("\n").filter((line) => line.startsWith("ERROR: Cannot write to"));
        assertEquals(said.length, 1, stderr);
        assertMatch(said[0], /^ERROR: Cannot write to stdout: /);
        assertMatch(said[0], cause);
        assertMatch(said[0], /the run goes on$/);
        assert(!/^\s+at /m.test(stderr), `a stack trace reached the user:\n${stderr}`);
      };
      await t.step(`${name}: the renewal is made, and its count is the status`, async () => {
        ca.mode = "good";
        await Deno.remove(path.join(site, "responses"), { recursive: true }).catch(() => {});
        const run = await runBotRedirected(site, [], redirection);
        assertEquals(run.code, 1, run.stderr);
        assertEquals(await ca.verifiedStatus(response(site, "a.test"), cert), "good");
        saidOnce(run.stderr);
      });
      await t.step(`${name}: nothing renewed is 255, not 0`, async () => {
        const run = await runBotRedirected(site, [], redirection);
        assertEquals(run.code, 255, run.stderr);
        saidOnce(run.stderr);
      });
      await t.step(`${name}, with the responder failing: 255`, async () => {
        const stored = await Deno.readFile(response(site, "a.test"));
        ca.mode = "http500";
        const run = await runBotRedirected(site, ["--force"], redirection);
        assertEquals(run.code, 255, run.stderr);
        assertMatch(run.stderr, /^\[a\.test\] ERROR: No usable response/m);
        assertEquals(await Deno.readFile(response(site, "a.test")), stored);
      });
    }
    await t.step("stdout and stderr both /dev/full: the count, or 255", async () => {
      ca.mode = "good";
      const renewed = await runBotRedirected(site, ["--force"], "> /dev/full 2>&1");
      assertEquals(renewed.code, 1);
      ca.mode = "http500";
      const failed = await runBotRedirected(site, ["--force"], "> /dev/full 2>&1");
      assertEquals(failed.code, 255);
    });
  });
});

Deno.test("lines carry sd-daemon priorities only where JOURNAL_STREAM names the stream", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "timeout: 2\nretries: 0\n");
    await ca.issueLeaf(path.join(site, "certs"), "down.test", {
      ocspUrls: ["http://127.0.0.1:99999/"],
    });
    const [out, err] = [path.join(site, "out"), path.join(site, "err")];
    const run = async (stream: string | undefined) => {
      await Deno.writeTextFile(out, "");
      await Deno.writeTextFile(err, "");
      const env: Record<string, string> = {};
      if (stream) {
        const info = await Deno.stat(stream);
        env.JOURNAL_STREAM = `${info.dev}:${info.ino}`;
      }
      const result = await runBotRedirected(site, ["--force"], `>> ${out} 2>> ${err}`, env);
      assertEquals(result.code, 255);
      return [await Deno.readTextFile(out), await Deno.readTextFile(err)];
    };
    const [plainOut, plainErr] = await run(undefined);
    assert(!/^</m.test(plainOut + plainErr), plainOut + plainErr);
    const [journalOut, otherErr] = await run(out);
    assertMatch(journalOut, /^<6>\[a\.test\] Stored new OCSP response/m);
    assert(
      journalOut.split("\n").filter(Boolean).every((line) => /^<[346]>/.test(line)),
      journalOut,
    );
    assert(!/^</m.test(otherErr), otherErr);
    const [, journalErr] = await run(err);
    assertMatch(journalErr, /^<4>\[down\.test\] WARNING: Attempt 1 of 1/m);
    assertMatch(journalErr, /^<3>\[down\.test\] ERROR: No usable response/m);
  });
});

Deno.test("SIGTERM, SIGINT or SIGHUP mid-fetch: children stopped, one line, 255", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test", "b.test"], BASE_CONFIG + "timeout: 20\n");
    assertEquals((await runBot(site)).code, 2);
    const stored = await Deno.readFile(response(site, "a.test"));
    ca.mode = "hang";
    for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
      await t.step(signal, async () => {
        const asked = ca.hostHeaders.length;
        const bot = new Deno.Command(Deno.execPath(), {
          args: ["run", "--quiet", ...BOT_PERMISSIONS, BOT, "--force"],
          cwd: site,
          env: { NO_COLOR: "1" },
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).spawn();
        while (ca.hostHeaders.length === asked) await new Promise((r) => setTimeout(r, 50));
        const sent = Date.now();
        bot.kill(signal);
        const { code, stdout, stderr } = await bot.output();
        assert(Date.now() - sent < 5000, "the bot took too long to stop");
        assertEquals(code, 255, decoder.decode(stderr));
        assertEquals(
          decoder.decode(stderr),
          `ERROR: Stopped by ${signal}: 0 renewed responses are in place, 2 certificates were left as they were; state saved\n`,
        );
        assert(!/Failure|Success/.test(decoder.decode(stdout)));
        await new Promise((r) => setTimeout(r, 300));
        assertEquals(await opensslAsking(ca.url), [], "an openssl child outlived the bot");
        assertEquals(await Deno.readFile(response(site, "a.test")), stored);
        const names = [...Deno.readDirSync(path.join(site, "responses"))].map((e) => e.name).sort();
        assertEquals(names, [
          ".ocspbot-state.json",
          ".ocspbot-state.json.lock",
          "a.test.ocsp-resp",
          "b.test.ocsp-resp",
        ]);
      });
    }
    await t.step("while waiting for another run's lock", async () => {
      const spawnBot = () =>
        new Deno.Command(Deno.execPath(), {
          args: ["run", "--quiet", ...BOT_PERMISSIONS, BOT, "--force"],
          cwd: site,
          env: { NO_COLOR: "1" },
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).spawn();
      const asked = ca.hostHeaders.length;
      const holder = spawnBot();
      try {
        while (ca.hostHeaders.length === asked) await new Promise((r) => setTimeout(r, 50));
        const waiting = spawnBot();
        // Once it holds the lock file open, it waits on it: a signal before that would be Deno's own.
        // (Deno reads /proc only with --allow-all; ls may read it.)
        const opened = async () =>
          (await new Deno.Command("sh", {
            args: ["-c", `ls -l /proc/${waiting.pid}/fd 2>/dev/null | grep -q '\\.lock$'`],
          }).output()).code === 0;
        for (let tries = 0; !(await opened()) && tries < 400; tries++) {
          await new Promise((r) => setTimeout(r, 25));
        }
        waiting.kill("SIGTERM");
        const { code, stderr } = await waiting.output();
        assertEquals(code, 255);
        assertEquals(decoder.decode(stderr), "ERROR: stopped by SIGTERM; nothing changed\n");
      } finally {
        holder.kill("SIGKILL");
        await holder.output();
      }
    });
  });
});

Deno.test("the chain's issuer is found whatever the order; without one, no responder is asked", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    const certs = path.join(site, "certs");
    const chain = path.join(certs, "a.test-chain.pem");
    const [leaf, intermediate, root] = await Promise.all(
      [path.join(certs, "a.test.pem"), ca.chain, path.join(ca.dir, "root.pem")]
        .map((file) => Deno.readTextFile(file)),
    );
    const cases: [string, string][] = [
      ["a fullchain.pem given as chain", leaf + intermediate],
      ["the root before the intermediate", root + intermediate],
      [
        "a key before the intermediate",
        await Deno.readTextFile(path.join(ca.dir, "leaf.key")) + intermediate,
      ],
    ];
    for (const [name, contents] of cases) {
      await t.step(name, async () => {
        await Deno.writeTextFile(chain, contents);
        const run = await runMain(site, ["--force"]);
        assertEquals(run.code, 1, run.stdout + run.stderr);
        assertEquals(
          await ca.verifiedStatus(response(site, "a.test"), path.join(certs, "a.test.pem")),
          "good",
        );
      });
    }
    await t.step("a chain without the issuer: an error naming both files", async () => {
      await Deno.writeTextFile(chain, root);
      const asked = ca.hostHeaders.length;
      const run = await runMain(site, ["--force"]);
      assertEquals(run.code, 255, run.stdout + run.stderr);
      assertMatch(
        run.stderr,
        /^\[a\.test\] ERROR: Chain ".*a\.test-chain\.pem" and certificate ".*a\.test\.pem" hold no certificate that issued ".*a\.test\.pem" \(issuer "CN=ocspbot test intermediate"\); put the intermediate that signed it in the chain file; no responder was asked$/m,
      );
      assertEquals(ca.hostHeaders.length, asked, "a responder was asked");
    });
  });
});

Deno.test("a revocation the run saw is CRITICAL in --check, while the good response stays", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["r.test"]);
    assertEquals((await runMain(site)).code, 1);
    ca.setStatus(await serialOf(path.join(site, "certs", "r.test.pem")), "revoked");
    const due = fakeNow(19 * HOUR);
    assertEquals((await runMain(site, [], due)).code, 255);
    const check = await runMain(site, ["--check"], due);
    assertEquals(check.code, 2, check.stdout);
    assertMatch(
      check.stdout,
      /^\[r\.test\] the responder said at .* UTC that the certificate is revoked since .* UTC \(keyCompromise\); replace it: CRITICAL$/m,
    );
    const report = JSON.parse((await runMain(site, ["--check", "--json"], due)).stdout);
    const r = report.certificates["r.test"];
    assertEquals([r.status, r.health, r.lastAttempt.outcome], ["good", "critical", "revoked"]);
    assertEquals(r.revoked.reason, "keyCompromise");
    assert(r.failingSince !== null);
  });
});

Deno.test("failing renewals are WARNING with their first time and last message, then CRITICAL", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "retries: 0\n");
    assertEquals((await runMain(site)).code, 1);
    ca.mode = "http500";
    const at = (hours: number) => fakeNow(hours * HOUR);
    const checkAt = async (hours: number) => {
      const run = await runMain(site, ["--check", "--json"], at(hours));
      return { code: run.code, report: JSON.parse(run.stdout), log: run.stderr };
    };
    await t.step("first failure: WARNING", async () => {
      assertEquals((await runMain(site, [], at(19))).code, 255);
      const { code, report, log } = await checkAt(19);
      assertEquals(code, 1, log);
      assertMatch(
        log,
        /^\[a\.test\] good, .*; renewals failing since .* UTC: No usable response .*: failing$/m,
      );
      assertMatch(log, /^OCSP WARNING - 1 of 1 renewals failing \(a\.test\)/m);
      assertEquals(report.certificates["a.test"].health, "failing");
    });
    await t.step("still failing an hour later: the first failure's time stays", async () => {
      const first = (await checkAt(19)).report.certificates["a.test"].failingSince;
      assertEquals((await runMain(site, [], at(20))).code, 255);
      const { report } = await checkAt(20);
      assertEquals(report.certificates["a.test"].failingSince, first);
      assertNotEquals(report.certificates["a.test"].lastAttempt.time, first);
    });
    await t.step("less than half the renewal window left: CRITICAL", async () => {
      const { code, report } = await checkAt(22);
      assertEquals([code, report.certificates["a.test"].health], [2, "critical"]);
    });
    await t.step("a renewal clears it", async () => {
      ca.mode = "good";
      assertEquals((await runMain(site, [], at(22))).code, 1);
      // The responder signs on the real clock: at +22 h its new answer is due already.
      const { code, report } = await checkAt(22);
      assertEquals([code, report.certificates["a.test"].health], [1, "due"]);
      assertEquals(report.certificates["a.test"].failingSince, null);
      assertEquals(report.certificates["a.test"].lastAttempt.outcome, "renewed");
    });
  });
});

Deno.test("a pre-signing responder's same answer is quiet until the stored response runs short", async () => {
  await withCa(async (ca) => {
    ca.cacheAnswers = true;
    const site = await makeSite(ca, ["a.test"]);
    assertEquals((await runMain(site)).code, 1);
    const early = await runMain(site, ["-q"], fakeNow(19 * HOUR));
    assertEquals([early.code, early.stdout, withoutFakeClock(early.stderr)], [0, "", ""]);
    const told = await runMain(site, [], fakeNow(19 * HOUR));
    assertMatch(
      told.stdout,
      /^\[a\.test\] Responder sent the stored response again; asking again next run \(4h \d+m left\)$/m,
    );
    const late = await runMain(site, ["-q"], fakeNow(22 * HOUR));
    assertEquals(late.code, 0);
    assertMatch(
      late.stderr,
      /^\[a\.test\] WARNING: Responder has had nothing newer since .* UTC; 1h \d+m left$/m,
    );
  });
});

Deno.test("on_revoked: staple installs the signed revoked answer once, and --check says CRITICAL", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["r.test"], BASE_CONFIG + "on_revoked: staple\n");
    const cert = path.join(site, "certs", "r.test.pem");
    assertEquals((await runMain(site)).code, 1);
    ca.setStatus(await serialOf(cert), "revoked");
    // The responder signs on the real clock: a week's answer is not due again at +19 h.
    ca.validityMinutes = 7 * 24 * 60;
    const due = fakeNow(19 * HOUR);
    const stapled = await runMain(site, [], due);
    assertEquals(stapled.code, 1, stapled.stdout + stapled.stderr);
    assertMatch(
      stapled.stderr,
      /^\[r\.test\] WARNING: Responder says the certificate is revoked since .* \(keyCompromise\); its signed answer is now the staple \(on_revoked: staple\)/m,
    );
    assertEquals(await ca.verifiedStatus(response(site, "r.test"), cert), "revoked");
    const again = await runMain(site, [], due);
    assertEquals(again.code, 0, "a stapled revocation was fetched again: a reload every hour");
    const check = await runMain(site, ["--check"], due);
    assertEquals(check.code, 2, check.stdout);
    assertMatch(check.stdout, /that the certificate is revoked since .*: CRITICAL$/m);
  });
});

Deno.test("two configs sharing a response folder keep each other's records", async () => {
  await withCa(async (ca) => {
    const site = path.join(ca.dir, "site");
    const calls = await TestCa.writeCountingOpenssl(path.join(ca.dir, "openssl"));
    for (const name of ["a", "b"]) {
      await ca.issueLeaf(path.join(site, name), `${name}.test`);
      await Deno.writeTextFile(
        path.join(site, `${name}.yaml`),
        `minimum_validity: 6h\nocsp_folder: responses\nopenssl_executable: ${
          path.join(ca.dir, "openssl")
        }\nscan_keys:\n  - folder: ${name}\n`,
      );
    }
    const runCounting = async (config: string) => {
      const before = (await calls()).length;
      const run = await runMain(site, [config]);
      return [run.code, (await calls()).length - before];
    };
    assertEquals(await runCounting("a.yaml"), [1, 1]);
    assertEquals(await runCounting("b.yaml"), [1, 1]);
    assertEquals(await runCounting("a.yaml"), [0, 0]);
    assertEquals(await runCounting("b.yaml"), [0, 0], "a.yaml's run dropped b.yaml's record");
  });
});

Deno.test("--check with nothing to check is UNKNOWN; --json stays one document whatever fails", async (t) => {
  await withTempDir("ocspbot-json-", async (dir) => {
    await Deno.mkdir(path.join(dir, "empty"));
    const write = (config: string) => Deno.writeTextFile(path.join(dir, "ocspbot.yaml"), config);
    await t.step("no certificate found: UNKNOWN, 3", async () => {
      await write("minimum_validity: 1d\nscan_keys:\n  - folder: empty\n");
      const check = await runMain(dir, ["--check"]);
      assertEquals(check.code, 3, check.stdout);
      assertMatch(check.stdout, /^OCSP UNKNOWN - no certificates found in the configuration$/m);
    });
    const cases: [string, string, string[], number, RegExp][] = [
      [
        "--check, a config that does not parse",
        "a: [1, 2\n",
        ["--check", "--json"],
        3,
        /Cannot parse config/,
      ],
      ["a run, a config that does not parse", "a: [1, 2\n", ["--json"], 254, /Cannot parse config/],
      ["a run, a bad interval", "minimum_validity: soon\n", ["--json"], 253, /minimum_validity/],
      [
        "--check, an unknown option",
        "minimum_validity: 1d\n",
        ["--check", "--json", "--nope"],
        3,
        /Unknown option/,
      ],
    ];
    for (const [name, config, args, status, error] of cases) {
      await t.step(name, async () => {
        await write(config);
        const run = await runMain(dir, args);
        assertEquals(run.code, status, run.stdout + run.stderr);
        const report = JSON.parse(run.stdout);
        assertEquals(report.status, status);
        assertMatch(report.error, error);
        assertEquals(report.certificates, {});
      });
    }
  });
});

Deno.test("metrics_file: the textfile a node_exporter reads, after a run and after --check", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(
      ca,
      ["a.test"],
      BASE_CONFIG + "metrics_file: metrics/ocspbot.prom\n",
    );
    const file = path.join(site, "metrics", "ocspbot.prom");
    const run = await runMain(site, ["--json"]);
    assertEquals(run.code, 1, run.stderr);
    const nextUpdate = Date.parse(JSON.parse(run.stdout).certificates["a.test"].nextUpdate) / 1000;
    const metrics = await Deno.readTextFile(file);
    assertMatch(metrics, /^# TYPE ocspbot_response_next_update_timestamp_seconds gauge$/m);
    assert(
      metrics.includes(
        `ocspbot_response_next_update_timestamp_seconds{id="a.test"} ${nextUpdate}\n`,
      ),
      metrics,
    );
    assertMatch(metrics, /^ocspbot_last_attempt_success\{id="a\.test"\} 1$/m);
    assertMatch(metrics, /^ocspbot_certificate_revoked\{id="a\.test"\} 0$/m);
    assertMatch(metrics, /^ocspbot_run_exit_status\{mode="run"\} 1$/m);
    assertMatch(metrics, /^ocspbot_run_certificates\{mode="run",result="renewed"\} 1$/m);

    assertEquals((await runMain(site, ["--check"])).code, 0);
    const both = await Deno.readTextFile(file);
    assertMatch(both, /^ocspbot_run_exit_status\{mode="run"\} 1$/m);
    assertMatch(both, /^ocspbot_run_exit_status\{mode="check"\} 0$/m);
    assertMatch(both, /^ocspbot_run_certificates\{mode="check",result="fresh"\} 1$/m);
  });
});

Deno.test("the README's recipes, as pasted: fullchain, certbot, acme.sh, HAProxy, lighttpd, three files", async (t) => {
  await withCa(async (ca) => {
    const key = await Deno.readTextFile(path.join(ca.dir, "leaf.key"));
    const intermediate = await Deno.readTextFile(ca.chain);
    // The test root as the system's CA bundle: openssl's default store reads SSL_CERT_FILE.
    const systemStore = { SSL_CERT_FILE: path.join(ca.dir, "root.pem") };
    /** Issues a leaf for `name`, somewhere out of the way; returns its PEM and file. */
    const issue = async (name: string) => {
      const files = await ca.issueLeaf(path.join(ca.dir, "issued", crypto.randomUUID()), name);
      return { pem: await Deno.readTextFile(files.cert), file: files.cert };
    };
    /** A machine's root under the CA's folder, with `files` at their absolute paths in it. */
    const machine = async (files: Record<string, string>) => {
      const root = path.join(ca.dir, "machines", crypto.randomUUID());
      for (const [file, text] of Object.entries(files)) {
        await writeWithFolders(path.join(root, file), text);
      }
      return root;
    };
    /** Runs `recipe` from the README on `root`: `renewed` responses, each good for its leaf. */
    const runRecipe = async (
      recipe: string,
      root: string,
      responses: Record<string, string>,
      env = {},
    ) => {
      await Deno.writeTextFile(path.join(root, "ocspbot.yaml"), await readmeRecipe(recipe, root));
      const run = await runBot(root, [], env);
      assertEquals(run.code, Object.keys(responses).length, run.stdout + run.stderr);
      for (const [file, leaf] of Object.entries(responses)) {
        assertEquals(await ca.verifiedStatus(path.join(root, file), leaf), "good", file);
      }
      return run;
    };

    await t.step("nginx's fullchain.pem with a private CA's root", async () => {
      const leaf = await issue("www.example.com");
      const root = await machine({
        "etc/nginx/tls/www.example.com-fullchain.pem": leaf.pem + intermediate,
        "etc/ssl/private-ca/rootchain.pem": await Deno.readTextFile(ca.rootchain),
      });
      await runRecipe("nginx", root, { "var/lib/ocspbot/www.example.com.der": leaf.file });
      assert(await exists(path.join(root, "reloaded-nginx")), "on_change did not run");
    });
    await t.step("HAProxy crt bundles with the key first, in the middle and last", async () => {
      const bundles: Record<string, string> = {};
      const responses: Record<string, string> = {};
      const orders = { first: [0, 1, 2], middle: [1, 0, 2], last: [1, 2, 0] };
      for (const [where, order] of Object.entries(orders)) {
        const leaf = await issue(`${where}.example.com`);
        const parts = [key, leaf.pem, intermediate];
        bundles[`etc/haproxy/certs/${where}.example.com.pem`] = order.map((i) => parts[i]).join("");
        responses[`etc/haproxy/certs/${where}.example.com.pem.ocsp`] = leaf.file;
      }
      const root = await machine(bundles);
      await runRecipe("haproxy", root, responses, systemStore);
      const backups = [...Deno.readDirSync(path.join(root, "var/backups/ocspbot"))];
      assertEquals(backups.length, 3, "the recipe's backups are not in backup_folder");
    });
    await t.step("no root anywhere near: the system's trust store must hold it", async () => {
      const leaf = await issue("www.example.com");
      const root = await machine({
        "etc/lighttpd/tls/www.example.com.pem": leaf.pem + intermediate,
      });
      await Deno.writeTextFile(
        path.join(root, "ocspbot.yaml"),
        await readmeRecipe("lighttpd", root),
      );
      const elsewhere = await runBot(root, [], { SSL_CERT_FILE: ca.chain });
      assertEquals(elsewhere.code, 255, "verified without the root in the trust store");
      await runRecipe(
        "lighttpd",
        root,
        { "var/lib/ocspbot/www.example.com.der": leaf.file },
        systemStore,
      );
      assert(await exists(path.join(root, "reloaded-lighttpd")), "on_change did not run");
    });
    await t.step(
      "certbot's live/ links into archive/, and a renewal that re-points them",
      async () => {
        const first = await issue("bot.example.com");
        const archive = "etc/letsencrypt/archive/bot.example.com";
        const root = await machine({
          [`${archive}/cert1.pem`]: first.pem,
          [`${archive}/chain1.pem`]: intermediate,
          "etc/letsencrypt/live/README": "certbot's own note, not a domain",
        });
        const link = async (generation: number) => {
          const live = path.join(root, "etc/letsencrypt/live/bot.example.com");
          await Deno.mkdir(live, { recursive: true });
          for (const name of ["cert", "chain"]) {
            await Deno.remove(path.join(live, `${name}.pem`)).catch(() => {});
            await Deno.symlink(
              `../../archive/bot.example.com/${name}${generation}.pem`,
              path.join(live, `${name}.pem`),
            );
          }
        };
        await link(1);
        const der = "var/lib/ocspbot/bot.example.com.der";
        await runRecipe("certbot", root, { [der]: first.file }, systemStore);
        const second = await issue("bot.example.com");
        await Deno.writeTextFile(path.join(root, archive, "cert2.pem"), second.pem);
        await Deno.writeTextFile(path.join(root, archive, "chain2.pem"), intermediate);
        await link(2);
        // No --force: the certificate changed, so the stored response is for another one.
        await runRecipe("certbot", root, { [der]: second.file }, systemStore);
      },
    );
    await t.step("an acme.sh folder", async () => {
      const leaf = await issue("acme.example.com");
      const root = await machine({
        "root/.acme.sh/acme.example.com/acme.example.com.cer": leaf.pem,
        "root/.acme.sh/acme.example.com/ca.cer": intermediate,
        "root/.acme.sh/acme.example.com/fullchain.cer": leaf.pem + intermediate,
        "root/.acme.sh/ca/README": "not a certificate folder",
      });
      const der = "var/lib/ocspbot/acme.example.com.der";
      await runRecipe("acme.sh", root, { [der]: leaf.file }, systemStore);
    });
    await t.step("the Python bot's three files", async () => {
      const files = await ca.issueLeaf(path.join(ca.dir, "issued", "three"), "three.example.com");
      const certs = "etc/ocspbot/certs";
      const root = await machine({
        [`${certs}/three.example.com.pem`]: await Deno.readTextFile(files.cert),
        [`${certs}/three.example.com-chain.pem`]: await Deno.readTextFile(files.chain),
        [`${certs}/three.example.com-rootchain.pem`]: await Deno.readTextFile(files.rootchain),
      });
      const der = "var/lib/ocspbot/three.example.com.ocsp-resp";
      await runRecipe("three files", root, { [der]: files.cert });
    });
  });
});

Deno.test("the README's deploy hooks, as the ACME clients run them: certbot, acme.sh, dehydrated, lego", async (t) => {
  await withCa(async (ca) => {
    const intermediate = await Deno.readTextFile(ca.chain);
    const systemStore = { SSL_CERT_FILE: path.join(ca.dir, "root.pem") };
    const issue = async (name: string) => {
      const files = await ca.issueLeaf(path.join(ca.dir, "issued", crypto.randomUUID()), name);
      return { pem: await Deno.readTextFile(files.cert), file: files.cert };
    };
    /**
     * A machine with `files`, the recipe's config at /etc/ocspbot/ocspbot.yaml
     * and ocspbot installed; a first run stores a response for `old`, from
     * the config's folder, as the Quick start's cron line runs it. The
     * recipe's ocsp_folder is made relative (the same folder, from there):
     * the hooks, run from /, must keep the hourly run's files all the same.
     */
    const machine = async (recipe: string, files: Record<string, string>) => {
      const root = path.join(ca.dir, "machines", crypto.randomUUID());
      for (const [file, text] of Object.entries(files)) {
        await writeWithFolders(path.join(root, file), text);
      }
      const config = (await readmeRecipe(recipe, root))
        .replace(`ocsp_folder: ${root}/var/lib/ocspbot`, "ocsp_folder: ../../var/lib/ocspbot");
      assert(
        config.includes("ocsp_folder: ../../"),
        `the ${recipe} recipe has another ocsp_folder`,
      );
      await writeWithFolders(path.join(root, "etc/ocspbot/ocspbot.yaml"), config);
      await installBot(root);
      const first = await runBot(path.join(root, "etc/ocspbot"), ["ocspbot.yaml"], systemStore);
      assertEquals(first.code, 1, first.stdout + first.stderr);
      return root;
    };
    /** Runs a hook as its client does, from a shell; returns its status and what it said. */
    const client = async (script: string, args: string[], env: Record<string, string>) => {
      const output = await new Deno.Command("bash", {
        args: ["-c", script, "client", ...args],
        // certbot's working directory, and most clients' under cron.
        cwd: "/",
        env: { ...systemStore, ...env },
        stdin: "null",
      }).output();
      return {
        code: output.code,
        said: decoder.decode(output.stdout) + decoder.decode(output.stderr),
      };
    };
    const renewedFor = async (root: string, der: string, leaf: string, said: string) => {
      assertEquals(await ca.verifiedStatus(path.join(root, der), leaf), "good", said);
    };

    await t.step("certbot: its deploy hook, with RENEWED_LINEAGE", async () => {
      const [first, second] = [await issue("bot.example.com"), await issue("bot.example.com")];
      const archive = "etc/letsencrypt/archive/bot.example.com";
      const root = await machine("certbot", {
        [`${archive}/cert1.pem`]: first.pem,
        [`${archive}/chain1.pem`]: intermediate,
        [`${archive}/cert2.pem`]: second.pem,
        [`${archive}/chain2.pem`]: intermediate,
        "etc/letsencrypt/live/bot.example.com/cert.pem": first.pem,
        "etc/letsencrypt/live/bot.example.com/chain.pem": intermediate,
      });
      // certbot's renewal: the live/ links now point at the second generation.
      const live = path.join(root, "etc/letsencrypt/live/bot.example.com");
      for (const name of ["cert", "chain"]) {
        await Deno.remove(path.join(live, `${name}.pem`));
        await Deno.symlink(
          `../../archive/bot.example.com/${name}2.pem`,
          path.join(live, `${name}.pem`),
        );
      }
      const hook = path.join(root, "etc/letsencrypt/renewal-hooks/deploy/ocspbot");
      await writeWithFolders(hook, await readmeHook("certbot", root));
      await Deno.chmod(hook, 0o755);
      const run = await client(`exec "${hook}"`, [], { RENEWED_LINEAGE: live });
      assertEquals(run.code, 0, run.said);
      await renewedFor(root, "var/lib/ocspbot/bot.example.com.der", second.file, run.said);
    });
    await t.step("acme.sh: the reload command of --install-cert", async () => {
      const [first, second] = [await issue("www.example.com"), await issue("www.example.com")];
      const fullchain = "etc/nginx/tls/www.example.com-fullchain.pem";
      const root = await machine("nginx", {
        [fullchain]: first.pem + intermediate,
        "etc/ssl/private-ca/rootchain.pem": await Deno.readTextFile(ca.rootchain),
      });
      await Deno.remove(path.join(root, "reloaded-nginx"));
      await Deno.writeTextFile(path.join(root, fullchain), second.pem + intermediate);
      const reloadcmd = /--reloadcmd '([^']*)'/.exec(await readmeHook("acme.sh", root))?.[1];
      assert(reloadcmd, "the acme.sh hook has no --reloadcmd '…'");
      // acme.sh runs it with eval, in sh.
      const run = await client(`sh -c '${reloadcmd}'`, [], {});
      assertEquals(run.code, 0, run.said);
      await renewedFor(root, "var/lib/ocspbot/www.example.com.der", second.file, run.said);
      assert(await exists(path.join(root, "reloaded-nginx")), "nginx was not reloaded");
    });
    await t.step("dehydrated: deploy_cert in its hook script", async () => {
      const [first, second] = [await issue("dh.example.com"), await issue("dh.example.com")];
      const certs = "etc/dehydrated/certs/dh.example.com";
      const root = await machine("dehydrated", {
        [`${certs}/cert.pem`]: first.pem,
        [`${certs}/chain.pem`]: intermediate,
        [`${certs}/cert-2.pem`]: second.pem,
      });
      // dehydrated's renewal: cert.pem now links to the new certificate.
      await Deno.remove(path.join(root, certs, "cert.pem"));
      await Deno.symlink("cert-2.pem", path.join(root, certs, "cert.pem"));
      const hook = await readmeHook("dehydrated", root);
      const folder = path.join(root, certs);
      const run = await client(`${hook}\ndeploy_cert "$@"`, [
        "dh.example.com",
        `${folder}/privkey.pem`,
        `${folder}/cert.pem`,
        `${folder}/fullchain.pem`,
        `${folder}/chain.pem`,
        "1700000000",
      ], {});
      assertEquals(run.code, 0, run.said);
      await renewedFor(root, "var/lib/ocspbot/dh.example.com.der", second.file, run.said);
      assert(await exists(path.join(root, "reloaded-nginx")), "nginx was not reloaded");
    });
    await t.step("lego: its deploy hook, with LEGO_HOOK_CERT_PATH", async () => {
      const [first, second] = [await issue("www.example.com"), await issue("www.example.com")];
      const crt = "var/lib/lego/certificates/www.example.com.crt";
      const root = await machine("lego", {
        [crt]: first.pem + intermediate,
        "var/lib/lego/certificates/www.example.com.issuer.crt": intermediate,
      });
      await Deno.writeTextFile(path.join(root, crt), second.pem + intermediate);
      const hook = path.join(root, "etc/lego/ocspbot-hook.sh");
      await writeWithFolders(hook, await readmeHook("lego", root));
      await Deno.chmod(hook, 0o755);
      const run = await client(`exec "${hook}"`, [], { LEGO_HOOK_CERT_PATH: path.join(root, crt) });
      assertEquals(run.code, 0, run.said);
      await renewedFor(root, "var/lib/ocspbot/www.example.com.der", second.file, run.said);
      assert(await exists(path.join(root, "reloaded-nginx")), "nginx was not reloaded");
    });
    await t.step("a path the config does not cover is 252, naming it", async () => {
      const root = await machine("lego", {
        "var/lib/lego/certificates/www.example.com.crt": (await issue("www.example.com")).pem +
          intermediate,
      });
      const run = await runBot(root, [
        path.join(root, "etc/ocspbot/ocspbot.yaml"),
        "--renewed",
        "/etc/letsencrypt/live/other.example.com",
      ], systemStore);
      assertEquals(run.code, 252, run.stdout + run.stderr);
      assertMatch(
        run.stderr,
        /^ERROR: --renewed names what no certificate of the config is in: "\/etc\/letsencrypt\/live\/other\.example\.com"/m,
      );
    });
  });
});

Deno.test("two intermediates, in either order, in the chain or in a fullchain bundle", async (t) => {
  const ca = await TestCa.create({ upper: true });
  try {
    const site = path.join(ca.dir, "site");
    const leaf = await ca.issueLeaf(path.join(site, "issued"), "deep.test");
    const cert = await Deno.readTextFile(leaf.cert);
    const [intermediate, upper] = await Promise.all(
      ["intermediate.pem", "upper.pem"].map((name) => Deno.readTextFile(path.join(ca.dir, name))),
    );
    const cases: [string, Record<string, string>, string][] = [
      [
        "chain: issuer first",
        { "cert.pem": cert, "chain.pem": intermediate + upper },
        "    chain: chain.pem\n",
      ],
      [
        "chain: issuer last",
        { "cert.pem": cert, "chain.pem": upper + intermediate },
        "    chain: chain.pem\n",
      ],
      ["fullchain, upper first", { "cert.pem": cert + upper + intermediate }, ""],
    ];
    for (const [name, files, chainKey] of cases) {
      await t.step(name, async () => {
        const dir = path.join(site, crypto.randomUUID());
        await Deno.mkdir(dir, { recursive: true });
        for (const [file, text] of Object.entries(files)) {
          await Deno.writeTextFile(path.join(dir, file), text);
        }
        await Deno.writeTextFile(
          path.join(dir, "ocspbot.yaml"),
          `minimum_validity: 6h\ndomains:\n  deep.test:\n    cert: cert.pem\n${chainKey}    rootchain: ${ca.rootchain}\n    ocsp: deep.der\n`,
        );
        const run = await runMain(dir);
        assertEquals(run.code, 1, run.stdout + run.stderr);
        assertEquals(await ca.verifiedStatus(path.join(dir, "deep.der"), leaf.cert), "good");
      });
    }
  } finally {
    await ca.close();
  }
});

Deno.test("proxy, from the config or from http_proxy/no_proxy", async () => {
  await withCa(async (ca) => {
    // 127.0.0.2:9 answers nothing: only the proxy (the CA's listener) gets through.
    const site = await makeSite(ca, [], BASE_CONFIG + `proxy: ${ca.url}\nretries: 0\ntimeout: 2\n`);
    await ca.issueLeaf(path.join(site, "certs"), "far.test", { ocspUrls: ["http://127.0.0.2:9/"] });
    assertEquals((await runMain(site)).code, 1);
    assertEquals(ca.proxied, ["http://127.0.0.2:9/"]);

    await Deno.writeTextFile(
      path.join(site, "ocspbot.yaml"),
      BASE_CONFIG + "retries: 0\ntimeout: 2\n",
    );
    assertEquals((await runMain(site, ["--force"], { http_proxy: ca.url })).code, 1);
    assertEquals(ca.proxied.length, 2);
    const direct = await runMain(site, ["--force"], { http_proxy: ca.url, no_proxy: "127.0.0.2" });
    assertEquals(direct.code, 255, "no_proxy was not honoured");
    assertEquals(ca.proxied.length, 2);
  });
});

Deno.test("certificateInfo() sees the TLS Feature (must-staple) extension", async () => {
  await withCa(async (ca) => {
    const folder = path.join(ca.dir, "leaves");
    const plain = await ca.issueLeaf(folder, "plain.test");
    const staple = await ca.issueLeaf(folder, "staple.test", { mustStaple: true });
    const read = (file: string) => certificateInfo(new X509Certificate(Deno.readFileSync(file)));
    assertEquals(read(plain.cert).mustStaple, false);
    assertEquals(read(staple.cert).mustStaple, true);
    assertEquals(read(staple.cert).ocspUrls, [ca.url]);
  });
});

// ------------------------------------------------ the run over weeks --

/** A TCP port on 127.0.0.1 that nothing listens on: a responder that is down. */
function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** A `domains:` entry for the leaf `name` of makeSite(), its response `<name>.der`. */
function domainEntry(name: string, extra = ""): string {
  return `  ${name}:\n    cert: certs/${name}.pem\n    chain: certs/${name}-chain.pem\n` +
    `    rootchain: certs/${name}-rootchain.pem\n    ocsp: ${name}.der\n${extra}`;
}

Deno.test("a private CA's root named once by an absolute rootchain_mask, as the Python bot reads it", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test", "b.test"]);
    const root = path.join(ca.dir, "pki", "private-root.pem");
    await writeWithFolders(root, await Deno.readTextFile(ca.rootchain));
    for (const name of ["a.test", "b.test"]) {
      await Deno.remove(path.join(site, "certs", `${name}-rootchain.pem`));
    }
    // os.path.join(dirpath, "/etc/…") is "/etc/…": the Python bot renews both.
    await Deno.writeTextFile(
      path.join(site, "ocspbot.yaml"),
      BASE_CONFIG + `    rootchain_mask: ${root}\n`,
    );
    const run = await runMain(site);
    assertEquals(run.code, 2, run.stdout + run.stderr);
    assert(await exists(response(site, "a.test")));
    assert(await exists(response(site, "b.test")));
    // Nothing in the folder changes when the file outside does: it is looked at every run.
    const again = await runMain(site);
    assertEquals(again.code, 0, again.stdout + again.stderr);
  });
});

Deno.test("a scanned certificate without its chain or rootchain is named in a warning, the status kept", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test", "b.test"]);
    await Deno.remove(path.join(site, "certs", "b.test-rootchain.pem"));
    for (let run = 1; run <= 2; run++) {
      // The second run reads the folder from the state's memory: the warning stays.
      const result = await runMain(site);
      assertEquals(result.code, run === 1 ? 1 : 0, result.stdout + result.stderr);
      assertMatch(
        result.stderr,
        /^WARNING: Certificate ".*\/certs\/b\.test\.pem" \(scan_keys folder "certs" of config "ocspbot\.yaml"\) is skipped: its rootchain ".*\/certs\/b\.test-rootchain\.pem" does not exist; add it, or fix "rootchain_mask"$/m,
      );
      // a.test-chain.pem and the like match "{domain}.pem" too, and are nobody's certificate.
      assertEquals(result.stderr.match(/is skipped/g)?.length, 1, result.stderr);
    }
  });
});

Deno.test("a responder that is down costs one certificate's attempts per run, not every certificate's", async () => {
  await withCa(async (ca) => {
    const names = ["a.test", "b.test", "c.test", "d.test"];
    const down = `    ocsp_responder_uri: http://127.0.0.1:${closedPort()}/\n`;
    const site = await makeSite(
      ca,
      names,
      "minimum_validity: 6h\nocsp_folder: responses\ntimeout: 1\nretries: 1\ndomains:\n" +
        names.map((name) => domainEntry(name, down)).join(""),
    );
    const started = Date.now();
    const run = await runMain(site);
    const seconds = (Date.now() - started) / 1000;
    assertEquals(run.code, 255, run.stdout + run.stderr);
    // One certificate: two attempts of at most 1 s and a pause of 1 s. Four, before: 12 s.
    assert(seconds < 7, `${seconds} s:\n${run.stderr}`);
    assertEquals(run.stderr.match(/WARNING: Attempt \d of 2/g)?.length, 2, run.stderr);
    assertEquals(
      run.stderr.match(/it gave no answer earlier in this run .*; not asked again/g)?.length,
      3,
      run.stderr,
    );
  });
});

Deno.test("an answer whose chain the trust store cannot anchor is not asked for again and again", async () => {
  await withCa(async (ca) => {
    // Without a rootchain, openssl anchors in the system's store, which knows no test CA.
    const site = await makeSite(
      ca,
      ["a.test"],
      BASE_CONFIG + "    rootchain_mask: null\ntimeout: 5\nretries: 2\n",
    );
    const run = await runMain(site);
    assertEquals(run.code, 255, run.stdout + run.stderr);
    assertMatch(run.stderr, /unable to get local issuer certificate/);
    assertEquals(run.stderr.match(/WARNING: Attempt \d of 3/g)?.length, 1, run.stderr);
  });
});

Deno.test("a rootchain that does not anchor the issuer refuses, before any responder is asked", async () => {
  await withCa(async (ca) => {
    const other = await TestCa.create();
    try {
      const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "timeout: 5\nretries: 2\n");
      await Deno.copyFile(other.rootchain, path.join(site, "certs", "a.test-rootchain.pem"));
      const run = await runMain(site);
      assertEquals(run.code, 255, run.stdout + run.stderr);
      assertMatch(
        run.stderr,
        /ERROR: Rootchain ".*a\.test-rootchain\.pem" does not anchor the issuer of ".*a\.test\.pem" \(issuer "CN=ocspbot test intermediate"\).*no responder was asked$/m,
      );
      assertEquals(ca.hostHeaders.length, 0, "a responder was asked");
    } finally {
      await other.close();
    }
  });
});

Deno.test("an on_change that failed runs again with the next run until it succeeds; --check warns meanwhile", async () => {
  await withCa(async (ca) => {
    const ready = path.join(ca.dir, "server-up");
    const reloads = path.join(ca.dir, "reloads.txt");
    const hook = `on_change: [sh, -c, 'test -e ${ready} || { echo "server down" >&2; exit 1; }; ` +
      `echo "$OCSPBOT_RENEWED" >> ${reloads}']\n`;
    const site = await makeSite(ca, ["a.test"], BASE_CONFIG + hook);
    const failed = await runMain(site);
    assertEquals(failed.code, 255, failed.stdout + failed.stderr);
    assertMatch(failed.stderr, /every run runs on_change again until it succeeds/);
    const waiting = await runMain(site, ["--check"]);
    assertEquals(waiting.code, 1, waiting.stdout);
    assertMatch(
      waiting.stdout,
      /^OCSP WARNING - .*on_change failing since .* \(a\.test\): .*server down/m,
    );
    const stillDown = await runMain(site);
    assertEquals(stillDown.code, 255, stillDown.stdout + stillDown.stderr);
    await Deno.writeTextFile(ready, "");
    // Nothing is due: the run is for the reload that failed.
    const retried = await runMain(site);
    assertEquals(retried.code, 0, retried.stdout + retried.stderr);
    assertMatch(retried.stdout, /Running on_change again for a\.test: it failed at /);
    assertEquals(await Deno.readTextFile(reloads), "a.test\n");
    const quiet = await runMain(site);
    assertEquals(quiet.code, 0, quiet.stdout + quiet.stderr);
    assertEquals(await Deno.readTextFile(reloads), "a.test\n", "ran again after it succeeded");
    const check = await runMain(site, ["--check"]);
    assertEquals(check.code, 0, check.stdout);
  });
});

Deno.test("a one-off failure is tried again by the next run, and --check's warning clears", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "timeout: 2\nretries: 0\n");
    assertEquals((await runMain(site)).code, 1);
    ca.mode = "http500";
    const forced = await runMain(site, ["--force", "--only", "a.test"]);
    assertEquals(forced.code, 255, forced.stdout + forced.stderr);
    const failing = await runMain(site, ["--check"]);
    assertEquals(failing.code, 1, failing.stdout);
    assertMatch(failing.stdout, /renewals failing/);
    ca.mode = "good";
    const next = await runMain(site);
    assertMatch(next.stdout, /the last attempt \(.*\) failed; trying again/);
    assert(next.code === 0 || next.code === 1, next.stdout + next.stderr);
    const cleared = await runMain(site, ["--check"]);
    assertEquals(cleared.code, 0, cleared.stdout);
  });
});

// ------------------------------------------------ one verdict per response --

Deno.test("one verdict per response: what the run refuses to staple, --check judges the same", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "timeout: 5\nretries: 0\n");
    const cert = path.join(site, "certs", "a.test.pem");
    const stored = response(site, "a.test");
    const MINUTE = 60_000;
    const DAY = 24 * HOUR;
    const brief = await ca.issueSigner("brief signer", 1);
    const briefEnd = new X509Certificate(await Deno.readTextFile(brief.cert)).validTo;
    type Case = {
      name: string;
      /** The run's clock, as an offset from now; the signer ending soon needs it moved. */
      clock?: (real: number) => number;
      /** What is stored before the run (relative to the run's clock); none: nothing. */
      stored?: (at: (ms: number) => Date) => ForgedAnswer[] | undefined;
      storedSigner?: "brief";
      /** What the responder answers (relative to the run's clock). */
      fetched?: (at: (ms: number) => Date) => ForgedAnswer[];
      fetchedSigner?: "brief";
      /** The fetched response in BER's indefinite length. */
      ber?: boolean;
      extraCerts?: () => Promise<Uint8Array[]>;
      config?: string;
      /** A run before the one judged, answered with this. */
      earlier?: (at: (ms: number) => Date) => ForgedAnswer[];
      /** The run's status; undefined: no run, --check alone. */
      run?: number;
      error?: RegExp;
      warning?: RegExp;
      replaced: boolean;
      check: number;
      checkLine?: RegExp;
      /** The JSON report still names the revocation. */
      revokedInJson?: boolean;
    };
    const good4d = (at: (ms: number) => Date): ForgedAnswer[] => [
      { status: "good", thisUpdate: at(-HOUR), nextUpdate: at(4 * DAY) },
    ];
    const cases: Case[] = [
      {
        name: "nextUpdate before thisUpdate: refused, the 4-day file stays",
        stored: good4d,
        fetched: (
          at,
        ) => [{ status: "good", thisUpdate: at(4.5 * MINUTE), nextUpdate: at(4 * MINUTE) }],
        run: 255,
        error: /new response has its nextUpdate \(.*\) before its thisUpdate/,
        replaced: false,
        check: 1,
        checkLine: /renewals failing/,
      },
      {
        name: "two answers for our serial, good then revoked: revoked wins",
        stored: good4d,
        fetched: (at) => [
          { status: "good", thisUpdate: at(-MINUTE), nextUpdate: at(5 * DAY) },
          { status: "revoked", thisUpdate: at(-MINUTE), nextUpdate: at(5 * DAY) },
        ],
        run: 255,
        error: /responder says the certificate is revoked/,
        replaced: false,
        check: 2,
        checkLine: /CRITICAL/,
      },
      {
        name: "a good answer signed before a revocation seen earlier: refused",
        stored: good4d,
        earlier: (at) => [{ status: "revoked", thisUpdate: at(-MINUTE), nextUpdate: at(5 * DAY) }],
        fetched: (
          at,
        ) => [{ status: "good", thisUpdate: at(-10 * MINUTE), nextUpdate: at(5 * DAY) }],
        run: 255,
        error: /was signed before the revoked answer seen at/,
        replaced: false,
        check: 2,
        checkLine: /revoked/,
        revokedInJson: true,
      },
      {
        name: "a second answer for our serial that expired: refused, as mozilla::pkix does",
        stored: good4d,
        fetched: (at) => [
          { status: "good", thisUpdate: at(-MINUTE), nextUpdate: at(5 * DAY) },
          { status: "good", thisUpdate: at(-5 * DAY), nextUpdate: at(-3 * DAY) },
        ],
        run: 255,
        error: /new response holds a second answer for this certificate that expired at/,
        replaced: false,
        check: 1,
        checkLine: /renewals failing/,
      },
      {
        name: "good then revoked in BER, which openssl keeps as it is: refused, not judged blind",
        stored: good4d,
        fetched: (at) => [
          { status: "good", thisUpdate: at(-MINUTE), nextUpdate: at(5 * DAY) },
          { status: "revoked", thisUpdate: at(-MINUTE), nextUpdate: at(5 * DAY) },
        ],
        ber: true,
        run: 255,
        error: /new response does not verify: it is not strict DER/,
        replaced: false,
        check: 1,
        checkLine: /renewals failing/,
      },
      {
        name: "a stored revoked answer is not replaced by an older good one",
        stored: (at) => [{ status: "revoked", thisUpdate: at(-HOUR), nextUpdate: at(4 * DAY) }],
        fetched: (at) => [{ status: "good", thisUpdate: at(-2 * HOUR), nextUpdate: at(5 * DAY) }],
        run: 255,
        error: /is older than the stored one/,
        replaced: false,
        check: 2,
      },
      {
        name: "a newer answer ending in 4 minutes does not replace one ending in 4 days",
        stored: good4d,
        fetched: (at) => [{ status: "good", thisUpdate: at(-MINUTE), nextUpdate: at(4 * MINUTE) }],
        run: 255,
        error: /new response ends at .*, before the stored one/,
        replaced: false,
        check: 1,
        checkLine: /renewals failing/,
      },
      {
        name: "nor one whose responder certificate ends in 4 minutes",
        clock: () => new Date(briefEnd).getTime() - 4 * MINUTE,
        stored: good4d,
        fetched: (at) => [{ status: "good", thisUpdate: at(-MINUTE), nextUpdate: at(5 * DAY) }],
        fetchedSigner: "brief",
        run: 255,
        error:
          /new response ends at .*, but its responder's certificate ends at .*, before the stored one/,
        replaced: false,
        check: 1,
        checkLine: /renewals failing/,
      },
      {
        name: "no nextUpdate and thisUpdate 2 days ago: expired by the 12-hour rule",
        stored: good4d,
        fetched: (at) => [{ status: "good", thisUpdate: at(-2 * DAY) }],
        run: 255,
        error: /new response expired already, at .*, 12 hours after its thisUpdate/,
        replaced: false,
        check: 1,
        checkLine: /renewals failing/,
      },
      {
        name: "another serial's answer beside ours: stored, and HAProxy's refusal said",
        fetched: (at) => [
          { status: "good", thisUpdate: at(-MINUTE), nextUpdate: at(5 * DAY) },
          { status: "good", thisUpdate: at(-MINUTE), nextUpdate: at(5 * DAY), other: true },
        ],
        run: 1,
        warning: /WARNING: HAProxy will not load the new response: it holds 2 answers, not one/,
        replaced: true,
        check: 0,
      },
      {
        name: "the same for a certificate pushed to HAProxy: refused before anything is written",
        config: "haproxy_socket: /nonexistent/haproxy.sock\n",
        fetched: (at) => [
          { status: "good", thisUpdate: at(-MINUTE), nextUpdate: at(5 * DAY) },
          { status: "good", thisUpdate: at(-MINUTE), nextUpdate: at(5 * DAY), other: true },
        ],
        run: 255,
        error: /new response is one HAProxy will not load: it holds 2 answers, not one/,
        replaced: false,
        check: 2,
      },
      {
        name: "no nextUpdate for a certificate pushed to HAProxy: refused",
        config: "haproxy_socket: /nonexistent/haproxy.sock\n",
        fetched: (at) => [{ status: "good", thisUpdate: at(-MINUTE) }],
        run: 255,
        error: /new response is one HAProxy will not load: it has no nextUpdate/,
        replaced: false,
        check: 2,
      },
      {
        name: "an unrelated expired certificate carried along does not end the response",
        stored: good4d,
        fetched: (at) => [{ status: "good", thisUpdate: at(-MINUTE), nextUpdate: at(5 * DAY) }],
        extraCerts: async () => [
          await openssl(
            [
              "req",
              "-x509",
              "-newkey",
              "ec",
              "-pkeyopt",
              "ec_paramgen_curve:P-256",
              "-nodes",
              "-keyout",
              "/dev/null",
              "-subj",
              "/CN=long gone",
              "-days",
              "1",
              "-outform",
              "DER",
            ],
            undefined,
            -10 * DAY,
          ),
        ],
        run: 1,
        replaced: true,
        check: 0,
        checkLine: /OCSP OK - 1 responses fresh, soonest expiry in (4d 23h|5d)/,
      },
      {
        name: "a responder certificate ending in 2 h: --check's summary and perfdata say 2 h",
        clock: () => new Date(briefEnd).getTime() - 2 * HOUR,
        stored: (at) => [{ status: "good", thisUpdate: at(-HOUR), nextUpdate: at(5 * DAY) }],
        storedSigner: "brief",
        replaced: false,
        check: 1,
        checkLine: /soonest expiry in (1h 59m|2h)\b.*soonest_expiry=7[12]\d\ds;/,
      },
      {
        name: "a stored answer 10 minutes ahead of the clock: CRITICAL, and renewed",
        stored: (at) => [{ status: "good", thisUpdate: at(10 * MINUTE), nextUpdate: at(4 * DAY) }],
        run: 1,
        replaced: true,
        check: 0,
      },
    ];
    for (const c of cases) {
      await t.step(c.name, async () => {
        const clock = c.clock?.(Date.now()) ?? Date.now();
        const at = (ms: number) => new Date(clock + ms);
        const env: Record<string, string> = c.clock
          ? { OCSPBOT_FAKE_NOW: new Date(clock).toISOString() }
          : {};
        await Deno.remove(path.join(site, "responses"), { recursive: true }).catch(() => {});
        await Deno.mkdir(path.join(site, "responses"));
        await Deno.writeTextFile(
          path.join(site, "ocspbot.yaml"),
          BASE_CONFIG + "timeout: 5\nretries: 0\n" + (c.config ?? ""),
        );
        const signerOf = (which?: "brief") => which ? brief : undefined;
        const storedAnswers = c.stored?.(at);
        if (storedAnswers) {
          const bytes = await ca.forge(cert, storedAnswers, { signer: signerOf(c.storedSigner) });
          await Deno.writeFile(stored, bytes);
        }
        if (c.earlier) {
          ca.mode = { fixed: await ca.forge(cert, c.earlier(at)) };
          await runMain(site, ["--force"], env);
        }
        const before = await Deno.readFile(stored).catch(() => undefined);
        if (c.name.includes("ahead of the clock")) {
          // What --check says of it first, before the run repairs it.
          const check = await runMain(site, ["--check"], env);
          assertEquals(check.code, 2, check.stdout);
          assertMatch(
            check.stdout,
            /stored response has a thisUpdate .* ahead of this machine's clock/,
          );
          ca.mode = "good";
        } else if (c.fetched) {
          const extraCerts = await c.extraCerts?.();
          ca.mode = {
            fixed: await ca.forge(cert, c.fetched(at), {
              signer: signerOf(c.fetchedSigner),
              extraCerts,
              ber: c.ber,
            }),
          };
        }
        if (c.run !== undefined) {
          const run = await runMain(site, c.fetched ? ["--force"] : [], env);
          const said = run.stdout + run.stderr;
          assertEquals(run.code, c.run, said);
          if (c.error) assertMatch(run.stderr, c.error);
          if (c.warning) assertMatch(run.stderr, c.warning);
          const after = await Deno.readFile(stored).catch(() => undefined);
          assertEquals(after !== undefined && !equalBytes(after, before), c.replaced, said);
          if (c.replaced && !c.name.includes("ahead of the clock")) {
            // The next run finds it fine: not "expired", not due again.
            const again = await runMain(site, [], env);
            assertEquals(again.code, 0, again.stdout + again.stderr);
          }
        }
        const check = await runMain(site, ["--check"], env);
        assertEquals(check.code, c.check, check.stdout);
        if (c.checkLine) assertMatch(check.stdout, c.checkLine);
        if (c.revokedInJson) {
          const json = JSON.parse((await runMain(site, ["--check", "--json"], env)).stdout);
          assert(json.certificates["a.test"].revoked !== null, JSON.stringify(json));
        }
        ca.mode = "good";
      });
    }
  });
});

function equalBytes(a: Uint8Array, b: Uint8Array | undefined): boolean {
  return b !== undefined && a.length === b.length && a.every((byte, i) => byte === b[i]);
}

Deno.test("a state file in a folder others may write is named in a warning: they could erase what it remembers", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    await Deno.mkdir(path.join(site, "responses"));
    await Deno.chmod(path.join(site, "responses"), 0o777);
    const run = await runMain(site);
    assertEquals(run.code, 1, run.stdout + run.stderr);
    assertMatch(
      run.stderr,
      /^WARNING: State file ".*\.ocspbot-state\.json" lies in folder ".*\/responses", which everybody may write: .*set "state_file" to a folder only root writes$/m,
    );
    await Deno.chmod(path.join(site, "responses"), 0o755);
    const quiet = await runMain(site);
    assert(!/State file .* lies in folder/.test(quiet.stderr), quiet.stderr);
  });
});

Deno.test("an include that repeats the main config's id is left out alone; the main config's certificate renews", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "includes: [conf.d]\n");
    await writeWithFolders(
      path.join(site, "conf.d", "team.yaml"),
      `domains:\n${domainEntry("a.test").replace("ocsp: a.test.der", "ocsp: team/a.test.der")}`,
    );
    const run = await runMain(site);
    assertEquals(run.code, 255, run.stdout + run.stderr);
    assertMatch(
      run.stderr,
      /^ERROR: Certificate id "a\.test" appears twice: .*; the one of domains of config "conf\.d\/team\.yaml" is left out$/m,
    );
    assert(await exists(response(site, "a.test")), "the main config's certificate was not renewed");
    assert(!(await exists(path.join(site, "responses", "team", "a.test.der"))));
  });
});

// -------------------------------------------- the deploy hook's edges --

Deno.test('--renewed= with an empty value is 252, as --renewed "" is', async () => {
  await withTempDir("ocspbot-renewed-", async (dir) => {
    for (const args of [["--renewed="], ["--renewed", ""]]) {
      const run = await runMain(dir, args);
      assertEquals(run.code, 252, run.stdout + run.stderr);
      assertMatch(run.stderr, /--renewed needs a file or folder/);
    }
  });
});

Deno.test("--renewed naming what no certificate is in is 252 at once, without waiting for the hourly run's lock", async () => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "lock_timeout: 20\n");
    const lock = path.join(site, "responses", ".ocspbot-state.json.lock");
    await Deno.mkdir(path.dirname(lock), { recursive: true });
    await Deno.writeTextFile(lock, "");
    await Deno.chmod(lock, 0o600);
    // Another run holds the lock, as the hourly run may while certbot's hook starts.
    const holder = await Deno.open(lock, { read: true });
    try {
      await holder.lock(true);
      const started = Date.now();
      const run = await runBot(site, ["--renewed", path.join(ca.dir, "elsewhere")]);
      assertEquals(run.code, 252, run.stdout + run.stderr);
      assert(Date.now() - started < 10_000, "it waited for the lock");
      assertMatch(run.stderr, /--renewed names what no certificate of the config is in/);
    } finally {
      holder.close();
    }
    const renewed = await runMain(site, ["--renewed", path.join(site, "certs")]);
    assertEquals(renewed.code, 1, renewed.stdout + renewed.stderr);
    assertMatch(renewed.stdout, /renewal forced \(--renewed: a new certificate\)/);
  });
});

Deno.test("serve without an address names the missing key", () => {
  const thrown = assertThrows(
    () => interpretConfig({ minimum_validity: "1d", serve: { name: "www.example.com" } }, "c.yaml"),
    ExitError,
  );
  assertEquals(thrown.message, 'Config "c.yaml": "serve.address" is missing');
});

Deno.test("--renewed waits a while for a responder that does not know the new certificate, then fails", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, []);
    const leaf = await ca.issueLeaf(path.join(site, "certs"), "new.test", { status: "unknown" });
    const hook = (wait: string) => ["--renewed", leaf.cert, "--renewed-wait", wait];
    await t.step(
      "still unknown when the wait ends: 255, which the ACME client reports",
      async () => {
        const started = Date.now();
        const run = await runMain(site, hook("0.6"));
        assertEquals(run.code, 255, run.stdout + run.stderr);
        assert(Date.now() - started < 10_000, "it waited past --renewed-wait");
        assertMatch(run.stdout, /Responder does not know the new certificate yet .*asking again/);
        assertMatch(
          run.stderr,
          /ERROR: The responder still does not know the new certificate ".*new\.test\.pem" after 0\.6 s \(responder says the certificate is unknown\); the server keeps the old certificate's response/,
        );
        assert(!(await exists(response(site, "new.test"))));
      },
    );
    await t.step("known a moment later: stapled before the hook returns", async () => {
      const learns = setTimeout(() => ca.setStatus(leaf.serial, "good", "new.test"), 500);
      try {
        const run = await runMain(site, hook("5"));
        assertEquals(run.code, 1, run.stdout + run.stderr);
        assertMatch(run.stdout, /asking again in 1 s, for up to/);
      } finally {
        clearTimeout(learns);
      }
      assertEquals(await ca.verifiedStatus(response(site, "new.test"), leaf.cert), "good");
    });
    await t.step("the hourly run still waits for the next run, without failing", async () => {
      await ca.issueLeaf(path.join(site, "certs"), "newer.test", { status: "unknown" });
      const run = await runMain(site);
      assertEquals(run.code, 0, run.stdout + run.stderr);
      assertMatch(run.stderr, /newer\.test.*not yet known to the responder .*; retried next run/);
    });
    await t.step("--renewed-wait takes seconds, and a path --renewed takes no dash", async () => {
      for (const args of [["--renewed-wait", "soon"], ["--renewed", "--force"]]) {
        const run = await runMain(site, args);
        assertEquals(run.code, 252, run.stdout + run.stderr);
      }
    });
  });
});

Deno.test("--renewed from the ACME client's working directory keeps the hourly run's files", async () => {
  await withCa(async (ca) => {
    // A name no other test uses: the old resolution wrote it under the client's cwd, /.
    const folder = `ocspbot-staples-${crypto.randomUUID()}`;
    const site = await makeSite(
      ca,
      ["a.test"],
      BASE_CONFIG.replace("ocsp_folder: responses", `ocsp_folder: ${folder}`),
    );
    const staple = path.join(site, folder, "a.test.ocsp-resp");
    try {
      // The hourly run, as the README's cron line runs it: from the config's folder.
      const hourly = await runMain(site, ["ocspbot.yaml"]);
      assertEquals(hourly.code, 1, hourly.stdout + hourly.stderr);
      const renewed = await ca.issueLeaf(path.join(site, "certs"), "a.test");
      const hook = await runBot("/", [path.join(site, "ocspbot.yaml"), "--renewed", renewed.cert]);
      assertEquals(hook.code, 1, hook.stdout + hook.stderr);
      assert(!(await exists(path.join("/", folder))), "the hook kept files under its cwd, /");
      assertEquals(await ca.verifiedStatus(staple, renewed.cert), "good");
      assertEquals(
        [...Deno.readDirSync(path.join(site, folder))].map((e) => e.name).sort(),
        [".ocspbot-state.json", ".ocspbot-state.json.lock", "a.test.ocsp-resp"],
      );
      // The hourly run from elsewhere says where its relative paths start.
      const elsewhere = await runMain(ca.dir, [path.join(site, "ocspbot.yaml")]);
      assertMatch(
        elsewhere.stdout,
        /Relative paths \("ocsp_folder", "state_file", "scan_keys"\) start at the working directory ".*"; a --renewed hook starts them at the config's folder/,
      );
    } finally {
      await Deno.remove(path.join("/", folder), { recursive: true }).catch(() => {});
    }
  });
});

Deno.test("a certificate link re-pointed while hooks run: the staple recorded is judged against the bytes asked about", async () => {
  await withCa(async (ca) => {
    const site = path.join(ca.dir, "site");
    const first = await ca.issueLeaf(path.join(site, "archive", "1"), "a.test");
    const second = await ca.issueLeaf(path.join(site, "archive", "2"), "a.test");
    const live = path.join(site, "live");
    await Deno.mkdir(live);
    const link = path.join(live, "cert.pem");
    await Deno.symlink(first.cert, link);
    await Deno.writeTextFile(
      path.join(site, "ocspbot.yaml"),
      `minimum_validity: 6h\nocsp_folder: responses\ndomains:\n  a.test:\n    cert: live/cert.pem\n` +
        `    chain: ${first.chain}\n    rootchain: ${first.rootchain}\n    ocsp: a.test.der\n`,
    );
    const staple = path.join(site, "responses", "a.test.der");
    const hourly = await runMain(site);
    assertEquals(hourly.code, 1, hourly.stdout + hourly.stderr);
    // Another process re-points the link back and forth, as hooks of two renewals would.
    const flipper = new Deno.Command("python3", {
      args: [
        "-c",
        `import os, sys, time
link, a, b = sys.argv[1:4]
end = time.time() + 30
while time.time() < end:
    for target in (b, a):
        os.symlink(target, link + ".new")
        os.rename(link + ".new", link)
        time.sleep(0.002)`,
        link,
        first.cert,
        second.cert,
      ],
      stdin: "null",
    }).spawn();
    const digest = async (file: string) =>
      nodeCrypto.createHash("sha256").update(await Deno.readFile(file)).digest("base64url");
    const hashes = [[await digest(first.cert), first.cert], [
      await digest(second.cert),
      second.cert,
    ]];
    const state = path.join(site, "responses", ".ocspbot-state.json");
    try {
      for (let i = 0; i < 15; i++) {
        const hook = await runMain(site, ["--renewed", link]);
        assertEquals(hook.code, 1, hook.stdout + hook.stderr);
        // The certificate the state says the staple was verified with is the one it is for.
        const line = (await Deno.readTextFile(state)).split("\n")
          .find((text) => text.startsWith("a.test.der\t"));
        const recorded = line?.split("\t")[1].split(" ")[1]?.split("/")[1];
        const cert = hashes.find(([hash]) => recorded && hash.startsWith(recorded))?.[1];
        assert(cert, `the state names neither certificate: ${line}`);
        assertEquals(await ca.verifiedStatus(staple, cert), "good", `hook ${i}: ${line}`);
      }
    } finally {
      flipper.kill("SIGKILL");
      await flipper.status;
    }
    await Deno.remove(link).catch(() => {});
    await Deno.remove(`${link}.new`).catch(() => {});
    await Deno.symlink(first.cert, link);
    // Whatever the hooks left, the next run staples the first certificate, and --check agrees.
    const after = await runMain(site);
    assert(after.code === 0 || after.code === 1, after.stdout + after.stderr);
    assertEquals(await ca.verifiedStatus(staple, first.cert), "good", after.stdout);
    const check = await runMain(site, ["--check"]);
    assertEquals(check.code, 0, check.stdout + check.stderr);
  });
});

Deno.test("--check asks a hung server once, and every certificate behind it in parallel", async () => {
  await withCa(async (ca) => {
    const names = Array.from({ length: 8 }, (_, i) => `s${i}.test`);
    // A server that takes connections and never speaks TLS.
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const held: Deno.Conn[] = [];
    const accepting = (async () => {
      for await (const connection of listener) held.push(connection);
    })();
    const { port } = listener.addr as Deno.NetAddr;
    try {
      const site = await makeSite(
        ca,
        names,
        `minimum_validity: 6h\nocsp_folder: responses\ntimeout: 1\nserve: 127.0.0.1:${port}\n` +
          `scan_keys:\n  - folder: certs\n`,
      );
      assertEquals((await runMain(site)).code, names.length);
      const started = Date.now();
      const check = await runMain(site, ["--check"]);
      const seconds = (Date.now() - started) / 1000;
      assertEquals(check.code, 1, check.stdout + check.stderr);
      // Before: 8 s, a handshake's timeout per certificate.
      assert(seconds < 4, `--check took ${seconds} s behind one hung server`);
      assertMatch(check.stdout, /OCSP WARNING - 8 of 8 servers not reached/);
      // Asked once: the other seven are told of the first's silence without asking.
      assertEquals(check.stdout.match(/no handshake within 1 s/g)?.length, 8, check.stdout);
      assertEquals(check.stdout.match(/earlier in this --check; not asked again/g)?.length, 7);
    } finally {
      listener.close();
      await accepting.catch(() => {});
      for (const connection of held) connection.close();
    }
  });
});

Deno.test("--check: a server presenting another certificate needs a reload, not a renewal", async () => {
  await withCa(async (ca) => {
    const port = closedPort();
    const site = await makeSite(
      ca,
      ["a.test", "b.test"],
      `minimum_validity: 6h\nocsp_folder: responses\nserve: 127.0.0.1:${port}\n` +
        `scan_keys:\n  - folder: certs\n`,
    );
    assertEquals((await runMain(site)).code, 2);
    // A server still on b.test's certificate and staple, asked about a.test too.
    const server = new Deno.Command("openssl", {
      args: [
        "s_server",
        "-accept",
        `127.0.0.1:${port}`,
        "-cert",
        path.join(site, "certs", "b.test.pem"),
        "-key",
        path.join(ca.dir, "leaf.key"),
        "-status_file",
        response(site, "b.test"),
        "-quiet",
      ],
      stdin: "piped",
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      for (let tries = 0; tries < 100; tries++) {
        try {
          (await Deno.connect({ hostname: "127.0.0.1", port })).close();
          break;
        } catch {
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      }
      const check = await runMain(site, ["--check"]);
      assertEquals(check.code, 1, check.stdout + check.stderr);
      assertMatch(
        check.stdout,
        /^\[a\.test\] served: 127\.0\.0\.1:\d+ presents another certificate \(serial [0-9A-F]+, not the configured [0-9A-F]+\) and staples a good response for it: it was not reloaded since the certificate was replaced; reload the server: WARNING$/m,
      );
      assertMatch(check.stdout, /^\[b\.test\] served: .* staples the stored response/m);
      assert(!/renew it/.test(check.stdout), check.stdout);
    } finally {
      server.stdin.close();
      server.kill();
      await server.status;
    }
  });
});

Deno.test("--check names a server that resets the connection at once in words, not an errno", async () => {
  await withCa(async (ca) => {
    const server = new Deno.Command("python3", {
      args: [
        "-c",
        `import socket, struct, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(8)
print(s.getsockname()[1], flush=True)
s.settimeout(20)
while True:
    c, _ = s.accept()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()`,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    try {
      const reader = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
      const port = Number((await reader.read()).value?.trim());
      reader.releaseLock();
      const site = await makeSite(
        ca,
        ["a.test"],
        `minimum_validity: 6h\nocsp_folder: responses\nserve: 127.0.0.1:${port}\n` +
          `scan_keys:\n  - folder: certs\n`,
      );
      assertEquals((await runMain(site)).code, 1);
      const check = await runMain(site, ["--check"]);
      assertEquals(check.code, 1, check.stdout + check.stderr);
      assertMatch(
        check.stdout,
        /served: cannot ask 127\.0\.0\.1:\d+: the server reset the connection before a TLS handshake/,
      );
      assert(!/errno/.test(check.stdout), check.stdout);
    } finally {
      server.kill("SIGKILL");
      await server.status;
      await server.stdout.cancel().catch(() => {});
    }
  });
});

Deno.test("the map at the top of ocspbot.ts names its chapters, in the order of their banners", async () => {
  const source = await Deno.readTextFile(path.join(import.meta.dirname!, "ocspbot.ts"));
  const header = source.slice(0, source.indexOf("@module"));
  const map = /\* The chapters of this file[^`]*```\n([\s\S]*?)\n \* ```/.exec(header)?.[1];
  assert(map !== undefined, "the header has no map of chapters");
  const mapped = map.split("\n").map((line) => /^ \* (\S+) /.exec(line)?.[1]);
  const banners = [...source.matchAll(/^\/\/ -+ (.+) --$/gm)].map((match) => match[1]);
  assertEquals(mapped, banners);
});
