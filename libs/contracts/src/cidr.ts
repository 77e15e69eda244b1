import { BlockList, isIPv4, isIPv6 } from 'node:net';

export type CidrCheck = { ok: true; normalized: string } | { ok: false; reason: string };

function ipv4ToBigInt(ip: string): bigint {
  return ip.split('.').reduce((acc, octet) => (acc << 8n) | BigInt(Number(octet)), 0n);
}

function ipv6ToBigInt(ip: string): bigint {
  let text = ip;
  const lastColon = text.lastIndexOf(':');
  const tail = text.slice(lastColon + 1);
  if (isIPv4(tail)) {
    const v4 = ipv4ToBigInt(tail);
    text = `${text.slice(0, lastColon + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const [head, rest] = text.split('::') as [string, string | undefined];
  const headParts = head ? head.split(':') : [];
  const restParts = rest !== undefined && rest !== '' ? rest.split(':') : [];
  const missing = 8 - headParts.length - restParts.length;
  const groups = rest === undefined ? headParts : [...headParts, ...Array(missing).fill('0'), ...restParts];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

/** The /64 network an IPv6 address is in, as its first four groups (`2001:db8:1:2`). */
export function ipv6Prefix64(ip: string): string {
  const network = ipv6ToBigInt(ip) >> 64n;
  return [48n, 32n, 16n, 0n].map((shift) => ((network >> shift) & 0xffffn).toString(16)).join(':');
}

/**
 * Checks a CIDR block strictly: a valid address, a prefix in range, and no host bits set
 * (`10.0.0.1/8` is refused: it almost always means a typo for `10.0.0.0/8` or `/32`).
 */
export function checkCidr(value: string): CidrCheck {
  const slash = value.indexOf('/');
  if (slash < 0) return { ok: false, reason: 'must be a CIDR block such as 10.0.0.0/8 (missing "/prefix")' };
  const address = value.slice(0, slash);
  const prefixText = value.slice(slash + 1);
  if (!/^\d{1,3}$/.test(prefixText)) return { ok: false, reason: 'the prefix length must be a number' };
  const prefix = Number(prefixText);
  // A zone id (fe80::1%eth0) names an interface, not a network: never a valid range.
  if (address.includes('%')) return { ok: false, reason: 'an IPv6 zone id ("%...") is not allowed in a range' };
  const v4 = isIPv4(address);
  if (!v4 && !isIPv6(address)) return { ok: false, reason: `"${address}" is not an IPv4 or IPv6 address` };
  const bits = v4 ? 32 : 128;
  if (prefix > bits) return { ok: false, reason: `the prefix length must be at most ${bits}` };
  const n = v4 ? ipv4ToBigInt(address) : ipv6ToBigInt(address);
  const hostMask = (1n << BigInt(bits - prefix)) - 1n;
  if ((n & hostMask) !== 0n) return { ok: false, reason: 'host bits are set; use the network address' };
  return { ok: true, normalized: `${address.toLowerCase()}/${prefix}` };
}

const compiled = new WeakMap<readonly string[], BlockList>();

function blockListOf(ranges: readonly string[]): BlockList {
  let list = compiled.get(ranges);
  if (!list) {
    list = new BlockList();
    for (const range of ranges) {
      const [address, prefix] = range.split('/') as [string, string];
      list.addSubnet(address, Number(prefix), isIPv4(address) ? 'ipv4' : 'ipv6');
    }
    compiled.set(ranges, list);
  }
  return list;
}

/**
 * Whether `ip` lies in one of `ranges` (validated CIDR blocks, as tenant settings hold them).
 * No ranges means no restriction. An IPv4 address mapped into IPv6 (`::ffff:10.1.2.3`, as a
 * dual-stack socket reports it) counts as the IPv4 address. An unknown address is outside.
 */
export function ipAllowed(ip: string | undefined, ranges: readonly string[]): boolean {
  if (ranges.length === 0) return true;
  if (!ip) return false;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  const address = mapped ? mapped[1]! : ip;
  if (isIPv4(address)) return blockListOf(ranges).check(address, 'ipv4');
  if (isIPv6(address)) return blockListOf(ranges).check(address, 'ipv6');
  return false;
}
