import { describe, expect, test } from "bun:test";
import { ConfigError, parseConfig, resolveConfigPath } from "../../src/config/load.ts";
import { FithaError, ExitCode } from "../../src/errors.ts";

const planes = `
[etcd.management]
endpoints = ["http://10.0.1.1:2379", "http://10.0.1.2:2379", "http://10.0.1.3:2379"]
[etcd.storage]
endpoints = ["http://10.0.2.1:2379"]
[etcd.service]
endpoints = ["https://[fd00::1]:2379"]
`;

/** The problems parseConfig reports for `source`, as "key: message" strings. */
function problems(source: string): string[] {
  try {
    parseConfig("test.toml", source);
  } catch (error) {
    if (error instanceof ConfigError) return error.problems.map((p) => `${p.key}: ${p.message}`);
    throw error;
  }
  throw new Error("expected the config to be rejected");
}

describe("config validation", () => {
  test("a minimal valid file gets every default", () => {
    const config = parseConfig("test.toml", planes);
    expect(config.log).toEqual({ level: "info", format: "human" });
    expect(config.etcd.prefix).toBe("/fitha");
    expect(config.etcd.dial_timeout_ms).toBe(3000);
    expect(config.etcd.request_timeout_ms).toBe(5000);
    expect(config.etcd.management.endpoints).toHaveLength(3);
    expect(config.etcd.service.endpoints).toEqual(["https://[fd00::1]:2379"]);
    expect(Object.isFrozen(config.etcd.management.endpoints)).toBe(true);
  });

  test("explicit values are kept", () => {
    const config = parseConfig("test.toml", `[log]\nlevel = "debug"\nformat = "json"\n[etcd]\nprefix = "/lab/fitha-2"\ndial_timeout_ms = 100\n${planes}`);
    expect(config.log).toEqual({ level: "debug", format: "json" });
    expect(config.etcd.prefix).toBe("/lab/fitha-2");
    expect(config.etcd.dial_timeout_ms).toBe(100);
  });

  test("an unknown key is named with its full path, and a near miss suggests the right one", () => {
    expect(problems(`colour = true\n${planes}`)).toEqual(["colour: unknown key"]);
    expect(problems(`[log]\nlevle = "info"\n${planes}`)).toEqual(['log.levle: unknown key (did you mean "level"?)']);
    expect(problems(`[etcd]\ndial_timeout = 100\n${planes}`)).toEqual(['etcd.dial_timeout: unknown key (did you mean "dial_timeout_ms"?)']);
    expect(problems(`${planes}\nusername = "root"`)).toEqual(["etcd.service.username: unknown key"]);
  });

  test("a wrong type names the key, what it accepts and what it got", () => {
    expect(problems(`[etcd]\ndial_timeout_ms = "3s"\n${planes}`)).toEqual(['etcd.dial_timeout_ms: expected an integer from 100 to 60000, got "3s"']);
    expect(problems(`[etcd]\ndial_timeout_ms = 2.5\n${planes}`)).toEqual(["etcd.dial_timeout_ms: expected an integer from 100 to 60000, got 2.5"]);
    expect(problems(`[log]\nlevel = 3\n${planes}`)).toEqual(['log.level: expected one of "error", "warn", "info", "debug", "trace", got 3']);
    expect(problems(`log = "info"\n${planes}`)).toEqual(['log: expected a table [log], got "info"']);
    expect(problems(`[etcd]\nprefix = 1979-05-27T07:32:00Z\n${planes}`)[0]).toStartWith("etcd.prefix: expected an absolute key path");
    expect(problems(`[etcd]\nrequest_timeout_ms = inf\n${planes}`)[0]).toEndWith("got Infinity");
  });

  test("a value out of range or not among the choices is refused", () => {
    expect(problems(`[etcd]\nrequest_timeout_ms = 99\n${planes}`)).toEqual(["etcd.request_timeout_ms: expected an integer from 100 to 60000, got 99"]);
    expect(problems(`[etcd]\nrequest_timeout_ms = 60001\n${planes}`)).toHaveLength(1);
    expect(problems(`[log]\nformat = "xml"\n${planes}`)).toEqual(['log.format: expected one of "human", "json", got "xml"']);
    expect(problems(`[etcd]\nprefix = "/fitha/"\n${planes}`)[0]).toStartWith("etcd.prefix: expected an absolute key path");
    expect(problems(`[etcd]\nprefix = "fitha"\n${planes}`)[0]).toStartWith("etcd.prefix:");
  });

  test("list items are checked one by one", () => {
    const bad = (endpoints: string) => planes.replace('["http://10.0.2.1:2379"]', endpoints);
    expect(problems(bad('["10.0.2.1:2379"]'))).toEqual(['etcd.storage.endpoints: item 1: expected an etcd client URL with scheme and port, like "http://10.0.0.1:2379", got "10.0.2.1:2379"']);
    expect(problems(bad('["http://a:2379", "http://a"]'))[0]).toStartWith("etcd.storage.endpoints: item 2: expected an etcd client URL");
    expect(problems(bad('["http://a:2379", "http://a:2379"]'))).toEqual(['etcd.storage.endpoints: item 2 repeats "http://a:2379"']);
    expect(problems(bad("[]"))[0]).toStartWith("etcd.storage.endpoints: expected a list of 1 to 9 distinct items");
    expect(problems(bad('"http://a:2379"'))[0]).toStartWith("etcd.storage.endpoints: expected a list");
    const ten = JSON.stringify(Array.from({ length: 10 }, (_, i) => `http://h${i}:2379`));
    expect(problems(bad(ten))[0]).toStartWith("etcd.storage.endpoints: expected a list of 1 to 9");
  });

  test("a missing required value is named, for every plane at once", () => {
    expect(problems("")).toEqual([
      'etcd.management.endpoints: missing; required: a list of 1 to 9 distinct items, each an etcd client URL with scheme and port, like "http://10.0.0.1:2379"',
      'etcd.storage.endpoints: missing; required: a list of 1 to 9 distinct items, each an etcd client URL with scheme and port, like "http://10.0.0.1:2379"',
      'etcd.service.endpoints: missing; required: a list of 1 to 9 distinct items, each an etcd client URL with scheme and port, like "http://10.0.0.1:2379"',
    ]);
  });

  test("every problem is reported, one line each naming the file", () => {
    try {
      parseConfig("/etc/fitha/fitha.toml", `[log]\nlevel = "loud"\nformat = 1\n[etcd.management]\nendpoints = ["x"]`);
      throw new Error("expected a ConfigError");
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      const lines = (error as ConfigError).message.split("\n");
      expect(lines).toHaveLength(5);
      for (const line of lines) expect(line).toStartWith("/etc/fitha/fitha.toml: ");
      expect((error as ConfigError).exitCode).toBe(ExitCode.usage);
    }
  });

  test("TOML syntax errors name the file and the line where the error starts", () => {
    const syntax = (source: string) => {
      try {
        parseConfig("f.toml", source);
      } catch (error) {
        expect(error).toBeInstanceOf(FithaError);
        expect(error).not.toBeInstanceOf(ConfigError);
        return (error as FithaError).message;
      }
      throw new Error("expected a syntax error");
    };
    expect(syntax(`${planes}\n[log\nlevel = "info"\n`)).toStartWith(`f.toml:${planes.split("\n").length + 1}: invalid TOML: `);
    expect(syntax('[log]\nlevel = "info"\nlevel = "debug"\n')).toBe("f.toml:3: invalid TOML: Cannot redefine key 'level'");
    // An unterminated multi-line list is reported where it starts.
    expect(syntax('[log]\nlevel = "info"\n[etcd.management]\nendpoints = [\n  "http://a:1",\n')).toStartWith("f.toml:4: invalid TOML: ");
  });
});

describe("config file location", () => {
  test("--config wins over FITHA_CONFIG, which wins over /etc/fitha/fitha.toml", () => {
    expect(resolveConfigPath("/a.toml", { FITHA_CONFIG: "/b.toml" })).toBe("/a.toml");
    expect(resolveConfigPath(undefined, { FITHA_CONFIG: "/b.toml" })).toBe("/b.toml");
    expect(resolveConfigPath(undefined, {})).toBe("/etc/fitha/fitha.toml");
    expect(resolveConfigPath("", { FITHA_CONFIG: "" })).toBe("/etc/fitha/fitha.toml");
  });
});
