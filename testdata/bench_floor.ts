// Copyright 2026 the ocspbot authors. MIT license.

/**
 * The floor of an hourly run with nothing due, for `deno task bench`: only
 * the work no implementation can skip. Deno starts, reads the state file as
 * ocspbot stores it, stats each distinct file a certificate names once (its
 * response, certificate, chain and rootchain; a chain shared by every
 * certificate once in all) and compares the stamps as ocspbot does. Nothing
 * else: no config, no folder listing, no output.
 *
 *     deno run --allow-read testdata/bench_floor.ts '<FloorLayout as JSON>'
 *
 * It prints nothing; it exits 1 when a stamp differs from the state's or a
 * record has no verified files (the bench then reports the round), 2 when
 * the state holds no record.
 *
 * @module
 */

/**
 * Where the certificates of a state are, as one scan_keys entry (not
 * recursive) says it: all the bench tells the floor, a few lines whatever
 * the number of certificates.
 */
export interface FloorLayout {
  /** The state file, as the bot wrote it. */
  state: string;
  /** The folder the certificates are in. */
  folder: string;
  /**
   * Masks inside `folder`, as scan_keys' cert_mask, chain_mask and
   * rootchain_mask: one with `{domain}` names a file per certificate, one
   * without names a single file every certificate shares.
   */
  cert: string;
  chain: string;
  rootchain: string;
  /** How far ahead of the real clock the bot's was (a test's), in ms; 0 by default. */
  clockAheadMs?: number;
  /** The response's file name; the `{domain}` in it gives the certificate. */
  ocsp: string;
}

/** As ocspbot.ts's STAMP_SETTLE_MS. */
const STAMP_SETTLE_MS = 2000;

/** The state file as the floor needs it: each record's files, and how their stamps are made. */
export interface StoredState {
  /** This format's copy of ocspbot.ts's fileStamp(): size, mtime, ctime, inode, device. */
  stamp(info: Deno.FileInfo, realNowMs: number): string;
  /** What follows the stamp in a recorded file: a stamp matches when the entry starts with both. */
  separator: string;
  /**
   * Calls `visit` with each response path and the files its verified record
   * names, in the bot's order (response, certificate, chain, rootchain), as
   * the file has them (stamp, separator, hash); undefined when it has none.
   */
  records(visit: (responsePath: string, files: string[] | undefined) => void): void;
}

/**
 * Reads the state file, and says how its stamps are made.
 *
 * This MUST follow the format ocspbot.ts's State reads and writes, and read
 * it the way the bot does: the format changes with the bot (version 3: a
 * JSON header line and a line per response), and the floor must then change
 * with it, here and nowhere else.
 */
export function readState(file: string): StoredState {
  const text = Deno.readTextFileSync(file);
  const headerEnd = text.indexOf("\n");
  const first = JSON.parse(headerEnd < 0 ? text : text.slice(0, headerEnd));
  if (first?.version === 3 && first.ocspbot === "state") {
    // Keys are relative to the state's folder when inside it, JSON-quoted when they start with ".
    const folder = file.slice(0, file.lastIndexOf("/") + 1);
    return {
      // The same numbers in base 36, `.`-separated, ctime in whole seconds.
      stamp(info, realNowMs) {
        const mtime = info.mtime?.getTime();
        const ctime = info.ctime?.getTime();
        if (mtime === undefined || ctime === undefined || info.ino === null || info.dev === null) {
          return "";
        }
        if (realNowMs - Math.max(mtime, ctime) < STAMP_SETTLE_MS) return "";
        return [info.size, mtime, Math.floor(ctime / 1000), info.ino, info.dev]
          .map((number) => number.toString(36)).join(".");
      },
      separator: "/",
      records(visit) {
        // `<key>\t<verified>\t<attempt>`; verified's first four fields are the files.
        for (let start = headerEnd + 1; start > 0 && start < text.length;) {
          const end = text.indexOf("\n", start);
          const line = text.slice(start, end < 0 ? text.length : end);
          start = end < 0 ? text.length : end + 1;
          const [key, verified] = line.split("\t", 2);
          const unquoted = key.startsWith('"') ? JSON.parse(key) : key;
          const responsePath = unquoted.startsWith("/") ? unquoted : folder + unquoted;
          const files = verified ? verified.split(" ", 4) : [];
          visit(responsePath, files.length === 4 ? files : undefined);
        }
      },
    };
  }
  throw new Error(`"${file}" is not an ocspbot state file of version 3`);
}

/** A mask's text around `{domain}`, or undefined for a mask without one. */
function split(mask: string): [before: string, after: string] | undefined {
  const parts = mask.split("{domain}");
  if (parts.length === 1) return undefined;
  if (parts.length !== 2) throw new Error(`the floor takes one {domain} per mask: "${mask}"`);
  return [parts[0], parts[1]];
}

if (import.meta.main) {
  const layout: FloorLayout = JSON.parse(Deno.args[0]);
  const state = readState(layout.state);
  const stampOf = (file: string) => {
    try {
      return state.stamp(Deno.statSync(file), Date.now() + (layout.clockAheadMs ?? 0));
    } catch {
      return "";
    }
  };
  /** As ocspbot.ts's unchangedEntry(): the recorded file still has this stamp. */
  const unchanged = (recorded: string, stamp: string) =>
    stamp !== "" && recorded.startsWith(stamp + state.separator);
  const dir = layout.folder.endsWith("/") ? layout.folder : layout.folder + "/";
  const ocsp = split(layout.ocsp)!;
  // Per certificate: the mask around {domain}; shared: the one file's stamp, taken once.
  const inputs = [layout.cert, layout.chain, layout.rootchain].map((mask) => {
    const parts = split(mask);
    return parts ? { parts, stamp: "" } : { parts, stamp: stampOf(dir + mask) };
  });
  let records = 0;
  let mismatches = 0;
  state.records((responsePath, files) => {
    records++;
    const name = responsePath.slice(responsePath.lastIndexOf("/") + 1);
    const domain = name.slice(ocsp[0].length, name.length - ocsp[1].length);
    let same = files !== undefined && unchanged(files[0], stampOf(responsePath));
    for (let i = 0; same && i < 3; i++) {
      const { parts, stamp } = inputs[i];
      same = unchanged(files![i + 1], parts ? stampOf(dir + parts[0] + domain + parts[1]) : stamp);
    }
    if (!same) mismatches++;
  });
  if (records === 0) Deno.exit(2);
  if (mismatches > 0) Deno.exit(1);
}
