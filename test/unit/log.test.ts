import { afterEach, describe, expect, test } from "bun:test";
import { Writable } from "node:stream";
import { configureLogging, logger } from "../../src/log.ts";
import type { LogFormat, LogLevel } from "../../src/config/fitha-config.ts";

/** Routes logging into memory and returns the lines written. */
function capture(level: LogLevel, format: LogFormat): string[] {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      lines.push(...String(chunk).split("\n").filter((line) => line !== ""));
      done();
    },
  });
  configureLogging({ level, format, stream });
  return lines;
}

afterEach(() => configureLogging({ level: "info", format: "human" }));

describe("logging", () => {
  test("json: one object per line with time, level, tag, msg and the fields", () => {
    const lines = capture("debug", "json");
    logger("lockd").info("joined lockspace", { host_id: 3, generation: 7 });
    logger("agent").debug("heartbeat sent");
    expect(lines).toHaveLength(2);
    const first = JSON.parse(lines[0]!);
    expect(first).toEqual({ time: expect.any(String), level: "info", tag: "lockd", msg: "joined lockspace", host_id: 3, generation: 7 });
    expect(Date.parse(first.time)).not.toBeNaN();
    expect(JSON.parse(lines[1]!)).toMatchObject({ level: "debug", tag: "agent", msg: "heartbeat sent" });
  });

  test("json: errors and bigints are serialised, and fields cannot overwrite the fixed keys", () => {
    const lines = capture("info", "json");
    logger("x").error("renewal failed", { error: new Error("EIO"), revision: 12n, msg: "spoof", level: "debug" });
    expect(JSON.parse(lines[0]!)).toEqual({
      time: expect.any(String),
      level: "error",
      tag: "x",
      msg: "renewal failed",
      error: { name: "Error", message: "EIO" },
      revision: "12",
    });
  });

  test("the level filters less severe lines, in both formats", () => {
    for (const format of ["json", "human"] as const) {
      const lines = capture("warn", format);
      const log = logger("filter");
      log.trace("t");
      log.debug("d");
      log.info("i");
      log.warn("w-line");
      log.error("e-line");
      expect(lines).toHaveLength(2);
      expect(lines[0]).toContain("w-line");
      expect(lines[1]).toContain("e-line");
    }
  });

  test("trace is the most verbose level", () => {
    const lines = capture("trace", "json");
    logger("t").trace("every byte");
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: "trace", msg: "every byte" });
  });

  test("human: the tag, message and fields are on the line", () => {
    const lines = capture("info", "human");
    logger("lockd").warn("renewal slow", { latency_ms: 812 });
    expect(lines.join("\n")).toContain("lockd");
    expect(lines.join("\n")).toContain("renewal slow");
    expect(lines.join("\n")).toContain("812");
  });

  test("loggers handed out before configureLogging follow the new settings", () => {
    const early = logger("early");
    const lines = capture("info", "json");
    early.info("after reconfigure");
    expect(JSON.parse(lines[0]!)).toMatchObject({ tag: "early", msg: "after reconfigure" });
  });

  test("repeated identical lines are all written (no throttling)", () => {
    const lines = capture("info", "json");
    for (let i = 0; i < 5; i++) logger("r").warn("storage slow");
    expect(lines).toHaveLength(5);
  });
});
