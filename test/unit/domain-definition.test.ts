/** The domain XML fitha keeps for a VM: checks, a generated <uuid>, fitha's lease element placed, replaced, removed. */
import { describe, expect, test } from "bun:test";
import { DomainXmlError, maxDefinitionBytes, readDomainDefinition, setLeaseElement } from "../../src/virt/domain-definition.ts";
import { domainIdentity } from "../../src/virt/domain-xml.ts";
import { leaseMetadata, LeaseMetadataError } from "../../src/virt/lease-metadata.ts";

const uuid = "6f1c8a3e-2b7d-4c1e-9a55-0d3b2f4e8c71";
const ns = "https://fitha.dev/xmlns/lease/1";
const nova = `<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1"><nova:lease>kept</nova:lease><nova:name>web-1</nova:name></nova:instance>`;

/** A domain as `virsh dumpxml` prints it: `metadata` inside <metadata> (none if undefined). */
function domain(metadata: string | undefined, { withUuid = true } = {}): string {
  return [
    "<domain type='kvm'>",
    "  <name>web-1</name>",
    ...(withUuid ? [`  <uuid>${uuid}</uuid>`] : []),
    ...(metadata === undefined ? [] : ["  <metadata>", `    ${metadata}`, "  </metadata>"]),
    "  <memory unit='KiB'>1048576</memory>",
    "  <devices>",
    "    <disk type='block' device='disk'><source dev='/dev/mapper/web-1'/><target dev='vda' bus='virtio'/></disk>",
    "  </devices>",
    "</domain>",
    "",
  ].join("\n");
}

const element = (slot: number, resource = uuid) => `<fitha:lease xmlns:fitha="${ns}" slot="${slot}" resource="${resource}"/>`;

function refusal(work: () => unknown): string {
  try {
    work();
  } catch (error) {
    expect(error instanceof DomainXmlError || error instanceof LeaseMetadataError).toBe(true);
    expect((error as DomainXmlError).exitCode).toBe(2);
    return (error as Error).message;
  }
  throw new Error("expected a refusal");
}

describe("readDomainDefinition", () => {
  test("name and UUID (lower-cased for keys and leases); the XML as given", () => {
    expect(readDomainDefinition(domain(undefined))).toEqual({ name: "web-1", uuid, xml: domain(undefined) });
    const upper = domain(undefined).replace(uuid, uuid.toUpperCase());
    expect(readDomainDefinition(upper)).toEqual({ name: "web-1", uuid, xml: upper });
  });

  test("a missing <uuid> is generated and inserted after the <name>, indented like it", () => {
    const generated = "0a1b2c3d-4e5f-4a6b-8c7d-8e9fa0b1c2d3";
    const definition = readDomainDefinition(domain(undefined, { withUuid: false }), () => generated);
    expect(definition).toEqual({ name: "web-1", uuid: generated, xml: domain(undefined).replace(uuid, generated) });
    // On one line, and with the real generator.
    const compact = readDomainDefinition("<domain><name>a</name><memory>1</memory></domain>");
    expect(compact.xml).toBe(`<domain><name>a</name><uuid>${compact.uuid}</uuid><memory>1</memory></domain>`);
    expect(domainIdentity(compact.xml).uuid).toBe(compact.uuid);
  });

  test("what is no domain fitha can keep is refused, naming the problem", () => {
    expect(refusal(() => readDomainDefinition("<network><name>default</name></network>"))).toBe("the root element is not <domain> (expected libvirt's domain XML, as `virsh dumpxml` prints it)");
    expect(refusal(() => readDomainDefinition("not xml"))).toStartWith("the root element is not <domain>");
    expect(refusal(() => readDomainDefinition("<domain type='kvm'><memory>1</memory></domain>"))).toBe("the domain has no <name>");
    expect(refusal(() => readDomainDefinition(domain(undefined).replace("web-1", "a/b")))).toBe(`the domain's <name> "a/b" must be 1 to 255 characters without "/" or control characters`);
    expect(refusal(() => readDomainDefinition(domain(undefined).replace(uuid, "not-a-uuid")))).toBe(`the domain's <uuid> "not-a-uuid" is not a UUID (expected 8-4-4-4-12 hex digits, e.g. ${uuid})`);
    expect(refusal(() => readDomainDefinition(domain(`<fitha:lease xmlns:fitha="${ns}" slot="x"/>`)))).toBe(`<fitha:lease> slot "x" is not a whole number`);
    expect(refusal(() => readDomainDefinition(domain(`<fitha:lease slot="1"/>`)))).toContain(`uses the prefix "fitha" without declaring it`);
    const large = domain(`<!-- ${"x".repeat(maxDefinitionBytes)} -->`);
    expect(refusal(() => readDomainDefinition(large))).toBe(`domain XML of ${Buffer.byteLength(large)} bytes is larger than the ${maxDefinitionBytes} bytes fitha keeps`);
  });
});

describe("setLeaseElement", () => {
  test("inserted into the domain's <metadata>, created if absent, in the form the qemu hook reads", () => {
    const created = setLeaseElement(domain(undefined), { slot: 3, resource: uuid });
    expect(created).toBe(domain(undefined).replace("</domain>", `  <metadata>\n    ${element(3)}\n  </metadata>\n</domain>`));
    expect(leaseMetadata(created)).toEqual({ slot: 3, resource: uuid });

    const beside = setLeaseElement(domain(nova), { slot: 0, resource: uuid });
    expect(beside).toBe(domain(`${element(0)}\n    ${nova}`));
    expect(leaseMetadata(beside)).toEqual({ slot: 0, resource: uuid });

    const empty = setLeaseElement(domain(undefined).replace("  <memory", "  <metadata />\n  <memory"), { slot: 65_535, resource: uuid });
    expect(empty).toBe(domain(element(65_535)));

    const compact = setLeaseElement(`<domain><name>a</name><uuid>${uuid}</uuid></domain>`, { slot: 1, resource: "a&b" });
    expect(compact).toBe(`<domain><name>a</name><uuid>${uuid}</uuid><metadata><fitha:lease xmlns:fitha="${ns}" slot="1" resource="a&amp;b"/></metadata></domain>`);
    expect(leaseMetadata(compact)).toEqual({ slot: 1, resource: "a&b" });
  });

  test("an element already there is replaced in place, whatever its prefix and form", () => {
    expect(setLeaseElement(domain(element(7)), { slot: 2, resource: uuid })).toBe(domain(element(2)));
    expect(setLeaseElement(domain(`${nova}\n    <f:lease xmlns:f='${ns}' slot='9'>\n    </f:lease>`), { slot: 2, resource: uuid })).toBe(domain(`${nova}\n    ${element(2)}`));
    // Declared on <metadata>, with another application's <lease> and a commented-out copy before it.
    const declared = domain(`<app:lease xmlns:app="urn:app" slot="9"/><!-- <f:lease slot="9"/> --><f:lease slot="9"/>`).replace("<metadata>", `<metadata xmlns:f="${ns}">`);
    const replaced = setLeaseElement(declared, { slot: 4, resource: uuid });
    expect(replaced).toBe(declared.replace(`--><f:lease slot="9"/>`, `-->${element(4)}`));
    expect(leaseMetadata(replaced)).toEqual({ slot: 4, resource: uuid });
  });

  test("removed for a VM that is not HA (its line with it); a domain without one is left as it is", () => {
    expect(setLeaseElement(domain(`${nova}\n    ${element(7)}`), null)).toBe(domain(nova));
    expect(setLeaseElement(domain(`${nova}${element(7)}`), null)).toBe(domain(nova));
    expect(setLeaseElement(domain(nova), null)).toBe(domain(nova));
    // Round trip: HA on, off, on again.
    const on = setLeaseElement(domain(undefined), { slot: 5, resource: uuid });
    expect(leaseMetadata(setLeaseElement(setLeaseElement(on, null), { slot: 5, resource: uuid }))).toEqual({ slot: 5, resource: uuid });
  });

  test("a bad element already there, or a place the hook would not read, is an error", () => {
    expect(refusal(() => setLeaseElement(domain(`<fitha:lease xmlns:fitha="${ns}" slot="1" extra="2"/>`), null))).toBe("<fitha:lease> has an unknown attribute extra (it takes slot, resource)");
    // Only a <metadata> in a comment: the element would be invisible to the hook.
    const commented = domain(undefined).replace("  <memory", "  <!-- <metadata> -->\n  <memory");
    expect(refusal(() => setLeaseElement(commented, { slot: 1, resource: uuid }))).toContain("fitha's lease element could not be placed as a direct child of the domain's <metadata>");
    // Not well-formed: fine for a domain without fitha's element, refused once it gets one.
    const broken = domain(nova).replace("</devices>", "");
    expect(setLeaseElement(broken, null)).toBe(broken);
    expect(refusal(() => setLeaseElement(broken, { slot: 1, resource: uuid }))).toStartWith("domain XML mentions fitha but is not well-formed:");
  });
});
