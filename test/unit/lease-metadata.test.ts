/** Which lease a domain runs under: fitha's <lease> element in the domain XML's <metadata>. */
import { describe, expect, test } from "bun:test";
import { leaseMetadata, LeaseMetadataError, maxDomainXmlBytes } from "../../src/virt/lease-metadata.ts";

const uuid = "6f1c8a3e-2b7d-4c1e-9a55-0d3b2f4e8c71";
const ns = "https://fitha.dev/xmlns/lease/1";

/** A domain as libvirt formats it, with `metadata` inside <metadata> (none if undefined). */
function domain(metadata: string | undefined, { name = "web-1", withUuid = true } = {}): string {
  return [
    "<domain type='kvm' id='7'>",
    `  <name>${name}</name>`,
    ...(withUuid ? [`  <uuid>${uuid}</uuid>`] : []),
    "  <description>web tier &amp; cache</description>",
    ...(metadata === undefined ? [] : ["  <metadata>", `    ${metadata}`, "  </metadata>"]),
    "  <memory unit='KiB'>1048576</memory>",
    "  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/></os>",
    "  <devices>",
    "    <disk type='block' device='disk'><source dev='/dev/mapper/web-1'/><target dev='vda' bus='virtio'/></disk>",
    "  </devices>",
    "</domain>",
    "",
  ].join("\n");
}

const nova = `<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1"><nova:name>web-1</nova:name><nova:flavor name="m1.small"><nova:memory>1024</nova:memory></nova:flavor></nova:instance>`;

function refusal(xml: string): string {
  try {
    leaseMetadata(xml);
  } catch (error) {
    expect(error).toBeInstanceOf(LeaseMetadataError);
    return (error as Error).message;
  }
  throw new Error("expected a LeaseMetadataError");
}

describe("lease metadata in the domain XML", () => {
  test("a domain without fitha's element is not HA-managed", () => {
    expect(leaseMetadata(domain(undefined))).toBeUndefined();
    expect(leaseMetadata(domain(nova))).toBeUndefined();
    // Scanned (the name mentions fitha), still nothing of fitha's.
    expect(leaseMetadata(domain(nova, { name: "fitha-web" }))).toBeUndefined();
    // Text that merely looks like the element is not one.
    expect(leaseMetadata(domain(`<app:note xmlns:app="urn:app"><![CDATA[<fitha:lease slot="1"/>]]><!-- <fitha:lease slot="2"/> --></app:note>`))).toBeUndefined();
  });

  test("slot, and the resource defaulting to the domain's UUID", () => {
    expect(leaseMetadata(domain(`<fitha:lease xmlns:fitha="${ns}" slot="12"/>`))).toEqual({ slot: 12, resource: uuid });
    expect(leaseMetadata(domain(`${nova}\n    <fitha:lease xmlns:fitha='${ns}' slot='0' resource='db-primary'/>`))).toEqual({ slot: 0, resource: "db-primary" });
    expect(leaseMetadata(domain(`<fitha:lease xmlns:fitha="${ns}" slot="3" resource="a&amp;b"></fitha:lease>`))).toEqual({ slot: 3, resource: "a&b" });
    expect(leaseMetadata(domain(`<fitha:lease xmlns:fitha="${ns}" slot="3">\n    </fitha:lease>`))).toEqual({ slot: 3, resource: uuid });
  });

  test("the element is found by its namespace, whatever the prefix and wherever it is declared", () => {
    expect(leaseMetadata(domain(`<f:lease xmlns:f="${ns}" slot="4"/>`))).toEqual({ slot: 4, resource: uuid });
    expect(leaseMetadata(domain(`<lease xmlns="${ns}" slot="5"/>`))).toEqual({ slot: 5, resource: uuid });
    const declaredOnMetadata = domain(undefined).replace("<memory", `<metadata xmlns:fitha="${ns}"><fitha:lease slot="6"/></metadata>\n  <memory`);
    expect(leaseMetadata(declaredOnMetadata)).toEqual({ slot: 6, resource: uuid });
    // Another application's <lease> is not fitha's.
    expect(leaseMetadata(domain(`<lease xmlns="urn:other" slot="x"/> <!-- fitha -->`))).toBeUndefined();
  });

  test("a malformed fitha element is an error naming the problem, never 'not HA-managed'", () => {
    const lease = (attributes: string, body?: string) => domain(`<fitha:lease xmlns:fitha="${ns}" ${attributes}${body === undefined ? "/>" : `>${body}</fitha:lease>`}`);
    expect(refusal(lease(""))).toBe(`<fitha:lease> has no slot attribute (the VM's lease slot, e.g. slot="12")`);
    for (const slot of ["twelve", "-1", "1.5", "", " 3", "99999999999999999999"]) expect(refusal(lease(`slot="${slot}"`))).toBe(`<fitha:lease> slot "${slot}" is not a whole number`);
    expect(refusal(lease(`slot="1" slots="2"`))).toBe("<fitha:lease> has an unknown attribute slots (it takes slot, resource)");
    expect(refusal(lease(`slot="1" fitha:resource="x"`))).toBe("<fitha:lease> has an unknown attribute fitha:resource (it takes slot, resource)");
    expect(refusal(lease(`slot="1" resource=""`))).toContain(`<fitha:lease> resource "" must be 1 to 64 bytes`);
    expect(refusal(lease(`slot="1" resource="${"x".repeat(65)}"`))).toContain("must be 1 to 64 bytes without spaces or control characters");
    expect(refusal(lease(`slot="1" resource="two words"`))).toContain(`resource "two words" must be`);
    expect(refusal(lease(`slot="1"`, "<slot>2</slot>"))).toBe("<fitha:lease> must be empty: its settings are attributes");
    expect(refusal(lease(`slot="1"`, "12"))).toBe("<fitha:lease> must be empty: its settings are attributes");
    expect(refusal(domain(`<fitha:lease xmlns:fitha="${ns}" slot="1"/>`, { withUuid: false }))).toBe("<fitha:lease> has no resource attribute and the domain has no <uuid> to default to");
  });

  test("anything else fitha-like is refused: other versions, other elements, wrong places, duplicates", () => {
    expect(refusal(domain(`<fitha:lease xmlns:fitha="https://fitha.dev/xmlns/lease/2" slot="1"/>`))).toBe(
      `<fitha:lease> is in namespace "https://fitha.dev/xmlns/lease/2", which this fitha does not know (it reads "${ns}")`,
    );
    expect(refusal(domain(`<fitha:lease xmlns:fitha="urn:elsewhere" slot="1"/>`))).toContain(`is in namespace "urn:elsewhere"`);
    expect(refusal(domain(`<fitha:lease slot="1"/>`))).toBe(`<fitha:lease> uses the prefix "fitha" without declaring it (xmlns:fitha="${ns}")`);
    expect(refusal(domain(`<fitha:leases xmlns:fitha="${ns}" slot="1"/>`))).toBe("<fitha:leases> is not an element of fitha's lease metadata (the only one is <lease>)");
    expect(refusal(domain(`<fitha:lease xmlns:fitha="${ns}" slot="1"/><fitha:lease xmlns:fitha="${ns}" slot="2"/>`))).toBe(
      "the domain's <metadata> has more than one <fitha:lease> element; a domain has one lease",
    );
    expect(refusal(domain(`<app:x xmlns:app="urn:app"><fitha:lease xmlns:fitha="${ns}" slot="1"/></app:x>`))).toBe("<fitha:lease> must be a direct child of the domain's <metadata>, not of <app:x>");
    expect(refusal(domain(undefined).replace("<devices>", `<devices><fitha:lease xmlns:fitha="${ns}" slot="1"/>`))).toBe("<fitha:lease> must be a direct child of the domain's <metadata>, not of <devices>");
  });

  test("a document that mentions fitha must be well-formed", () => {
    const good = domain(`<fitha:lease xmlns:fitha="${ns}" slot="1"/>`);
    expect(refusal(good.replace("</devices>", ""))).toBe("domain XML mentions fitha but is not well-formed: </domain> at offset " + (good.replace("</devices>", "").indexOf("</domain>")) + " closes <devices>");
    expect(refusal(good.replace("</domain>", ""))).toBe("domain XML mentions fitha but is not well-formed: <domain> is never closed");
    expect(refusal(`<!DOCTYPE domain>${good}`)).toBe("domain XML mentions fitha but is not well-formed: a document type declaration at offset 0 (libvirt never writes one)");
    expect(refusal(good.replace(`slot="1"`, "slot=1"))).toContain("attribute slot of <fitha:lease> at offset");
    expect(refusal(good.replace(`slot="1"`, `slot="1" slot="2"`))).toContain("attribute slot appears twice in <fitha:lease>");
    expect(refusal(good.replace("<metadata>", "<metadata><!-- never closed"))).toContain("a comment at offset");
  });

  test("the input is bounded", () => {
    const padding = `<!-- ${"x".repeat(maxDomainXmlBytes)} -->`;
    expect(refusal(domain(`<fitha:lease xmlns:fitha="${ns}" slot="1"/>${padding}`))).toMatch(/^domain XML of \d+ bytes is larger than the 4194304 bytes fitha reads$/);
    // Just under the limit, with many elements: scanned in one pass.
    const many = `<app:x xmlns:app="urn:app">${"<app:y a='1'>text</app:y>".repeat(100_000)}</app:x>`;
    expect(leaseMetadata(domain(`${many}<fitha:lease xmlns:fitha="${ns}" slot="7"/>`))).toEqual({ slot: 7, resource: uuid });
  });
});
