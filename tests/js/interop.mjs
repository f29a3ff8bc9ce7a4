// A second implementation's view of a Cairn network: js-libp2p dials Cairn
// nodes and speaks their protocols as docs/PROTOCOL.md describes them, with
// none of Cairn's code. Prints one JSON document on stdout.
//
//   node interop.mjs ROOT_CID ADDR...
//
// ADDR are /ip4/…/tcp/…/p2p/<peer id> of running storage nodes. With the
// first it identifies and runs a Kademlia lookup of ROOT_CID's bytes
// on /cairn/kad/1.0.0 (§9). Then, over /cairn/fetch/1.0.0 (§8), it asks the
// nodes for the manifest of ROOT_CID, decodes it (§5), fetches the data
// pieces of every segment, checks every block of the stream against its
// sha2-256 CID and joins the raw blocks: the file, whose sha2-256 it prints.
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { equals } from 'multiformats/bytes'
import * as dagCbor from '@ipld/dag-cbor'
import * as varint from 'uint8-varint'
import { Uint8ArrayList } from 'uint8arraylist'
import { createHash } from 'node:crypto'

// js-libp2p 3 calls Node.js 22's Promise.withResolvers; CI has Node.js 20.
Promise.withResolvers ??= function () {
  let resolve, reject
  const promise = new Promise((res, rej) => { resolve = res; reject = rej })
  return { promise, resolve, reject }
}

// Each step is logged to stderr; a run stuck for a minute fails naming it.
let current = 'start'
function step (name) {
  current = name
  console.error(`${new Date().toISOString()} ${name}`)
}
setTimeout(() => {
  console.error(`stuck in: ${current}`)
  process.exit(2)
}, 60_000).unref()

const FETCH = '/cairn/fetch/1.0.0'
const RAW = 0x55
const [rootArg, ...addrs] = process.argv.slice(2)
const root = CID.parse(rootArg)
const peers = addrs.map(a => multiaddr(a))

const node = await createLibp2p({
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(), // kad-dht's liveness checks
    // Loopback addresses are all a local network has.
    dht: kadDHT({ protocol: '/cairn/kad/1.0.0', clientMode: true, peerInfoMapper: passthroughMapper })
  }
})

// One exchange: a stream each, `uvarint(len) || DAG-CBOR(message)` each way.
async function request (addr, message) {
  const stream = await node.dialProtocol(addr, FETCH)
  const body = dagCbor.encode(message)
  stream.send(new Uint8ArrayList(varint.encode(body.length), body))
  await stream.close()
  const got = new Uint8ArrayList()
  for await (const chunk of stream) got.append(chunk)
  const len = varint.decode(got)
  const at = varint.encodingLength(len)
  if (got.length !== at + len) throw new Error(`an answer of ${got.length} bytes announced ${at + len}`)
  return dagCbor.decode(got.subarray(at))
}

// The first node's answer of the given variant, asking each in turn.
async function ask (message, variant) {
  const answers = []
  for (const addr of peers) {
    const answer = await request(addr, message).catch(e => e.message)
    if (answer[variant] !== undefined) return answer[variant]
    answers.push(answer)
  }
  throw new Error(`no node answered ${JSON.stringify(Object.keys(message))} with ${variant}: ${JSON.stringify(answers)}`)
}

const out = {}
step('dial')
const identified = new Promise(resolve => node.addEventListener('peer:identify', evt => {
  if (peers[0].toString().endsWith(`/p2p/${evt.detail.peerId}`)) resolve()
}))
const conn = await node.dial(peers[0])
step('identify')
// Identify runs on connect; its result lands in the peer store.
await identified
const peer = await node.peerStore.get(conn.remotePeer)
out.agent = new TextDecoder().decode(peer.metadata.get('AgentVersion'))
out.protocols = peer.protocols
step('kad lookup')
const closest = new Set()
for await (const event of node.services.dht.getClosestPeers(root.bytes)) {
  if (event.name === 'PEER_RESPONSE') for (const p of event.closer) closest.add(p.id.toString())
}
out.closest = [...closest]

step('manifest')
const manifest = dagCbor.decode((await ask({ ManifestV1: { root } }, 'ManifestV1')).data)
out.manifest = {
  root: manifest.root.toString(),
  version: manifest.version,
  k: manifest.scheme.k,
  m: manifest.scheme.m,
  segments: manifest.segments.length,
  stream_len: manifest.stream_len
}
step('pieces')
const stream = new Uint8ArrayList()
for (const segment of manifest.segments) {
  for (const piece of segment.slice(0, manifest.scheme.k)) {
    stream.append((await ask({ PieceV1: { piece } }, 'PieceV1')).data)
  }
}
const file = createHash('sha256')
let at = 0
for (const [cid, len] of manifest.blocks) {
  const bytes = stream.subarray(at, at + len)
  at += len
  if (!equals((await sha256.digest(bytes)).bytes, cid.multihash.bytes)) throw new Error(`block ${cid} does not match its CID`)
  if (cid.code === RAW) file.update(bytes)
}
out.blocks = manifest.blocks.length
out.file_sha256 = file.digest('hex')
console.log(JSON.stringify(out))
step('stop')
await node.stop()
