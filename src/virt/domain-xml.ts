/**
 * Just enough of libvirt's domain XML to know which domain a document describes: its <name> and
 * <uuid>. Not a parser: it reads the first <name> and <uuid> elements, which in libvirt's format
 * are the domain's own (they come before any nested element that could hold a <name>, such as
 * <metadata>). libvirt itself parses the XML for real; this serves error messages and the
 * in-memory hypervisor.
 */

export interface DomainIdentity {
  /** undefined when the document has no domain root or no <name>. */
  readonly name: string | undefined;
  /** As written (not normalised); undefined when absent. */
  readonly uuid: string | undefined;
  /** Whether the root element is <domain>. */
  readonly isDomain: boolean;
}

const rootPattern = /^\s*(?:<\?xml[^>]*\?>\s*)?(?:<!--[\s\S]*?-->\s*)*<domain[\s>/]/;

export function domainIdentity(xml: string): DomainIdentity {
  const isDomain = rootPattern.test(xml);
  return {
    isDomain,
    name: isDomain ? element(xml, "name") : undefined,
    uuid: isDomain ? element(xml, "uuid") : undefined,
  };
}

/** The trimmed text of the first <tag>…</tag>, entities decoded; undefined if absent or empty. */
function element(xml: string, tag: string): string | undefined {
  const text = new RegExp(`<${tag}>([^<]*)</${tag}>`).exec(xml)?.[1]?.trim();
  return text === undefined || text === "" ? undefined : decodeEntities(text);
}

const entities: Record<string, string> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };

/** The five predefined XML entities (a domain name with others is not worth a parser). */
export function decodeEntities(text: string): string {
  return text.replace(/&(lt|gt|amp|quot|apos);/g, (_, entity: string) => entities[entity]!);
}
