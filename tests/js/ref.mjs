// Drives the IPFS ecosystem's reference implementations for Cairn's
// compatibility tests. Every command prints one JSON document on stdout.
//
//   node ref.mjs hash FILE...        root CID of each file, importer defaults
//   node ref.mjs hash0 FILE...       the same, as `ipfs add` without flags (CIDv0, dag-pb leaves)
//   node ref.mjs dir DIR [v0]        root CID of a directory tree (hidden entries skipped, as `ipfs add -r`)
//   node ref.mjs car FILE OUT.car    import FILE and write its blocks as a CAR v1
//   node ref.mjs car0 FILE OUT.car   the same, imported as `ipfs add` does by default (CIDv0, dag-pb leaves)
//   node ref.mjs dircar DIR OUT.car [v0]  import a directory tree (as `dir`; `v0` as `ipfs add -r` without flags) into a CAR v1
//   node ref.mjs readcar IN.car [PATH]    read a CAR with @ipld/car, verify every block, export the bytes of the root (or of PATH under it)
import { importer } from 'ipfs-unixfs-importer'
import { exporter } from 'ipfs-unixfs-exporter'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { CarReader, CarWriter } from '@ipld/car'
import { sha256 } from 'multiformats/hashes/sha2'
import { CID } from 'multiformats/cid'
import { createReadStream, createWriteStream, readdirSync, readFileSync, statSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { join, basename } from 'node:path'
import { Readable } from 'node:stream'

async function importOne (entries, blockstore, options = {}) {
  let last
  for await (const entry of importer(entries, blockstore, options)) last = entry
  return last
}

// kubo's `ipfs add` without flags: CIDv0, leaves as dag-pb nodes of UnixFS
// type File (boxo's balanced layout keeps `TFile` leaves for backwards
// compatibility). It gives kubo's well-known CIDs: QmbFMke1… for no bytes,
// QmT78zSu… for "hello world\n".
const KUBO_V0 = { cidVersion: 0, rawLeaves: false }

function walk (dir, rel, out) {
  out.push({ path: rel })
  for (const name of readdirSync(dir).sort()) {
    if (name.startsWith('.')) continue
    const full = join(dir, name)
    if (statSync(full).isDirectory()) walk(full, `${rel}/${name}`, out)
    else out.push({ path: `${rel}/${name}`, content: createReadStream(full) })
  }
  return out
}

// Remembers every block with its full CID, in the order the importer wrote them.
class RecordingBlockstore extends MemoryBlockstore {
  written = new Map()
  async put (cid, bytes, options) {
    if (!this.written.has(cid.toString())) this.written.set(cid.toString(), { cid, bytes })
    return super.put(cid, bytes, options)
  }
}

const [cmd, ...args] = process.argv.slice(2)
const bs = new RecordingBlockstore()
if (cmd === 'hash' || cmd === 'hash0') {
  const cids = []
  for (const file of args) {
    const entry = await importOne([{ content: createReadStream(file) }], new MemoryBlockstore(), cmd === 'hash0' ? KUBO_V0 : {})
    cids.push(entry.cid.toString())
  }
  console.log(JSON.stringify(cids))
} else if (cmd === 'dir') {
  const entries = walk(args[0], basename(args[0]), [])
  let root
  for await (const entry of importer(entries, bs, args[1] === 'v0' ? KUBO_V0 : {})) if (entry.path === basename(args[0])) root = entry
  console.log(JSON.stringify(root.cid.toString()))
} else if (cmd === 'car' || cmd === 'car0') {
  const entry = await importOne([{ content: createReadStream(args[0]) }], bs, cmd === 'car0' ? KUBO_V0 : {})
  await writeCar(entry.cid, args[1])
  console.log(JSON.stringify(entry.cid.toString()))
} else if (cmd === 'dircar') {
  const entries = walk(args[0], basename(args[0]), [])
  let root
  for await (const entry of importer(entries, bs, args[2] === 'v0' ? KUBO_V0 : {})) if (entry.path === basename(args[0])) root = entry
  await writeCar(root.cid, args[1])
  console.log(JSON.stringify(root.cid.toString()))
} else if (cmd === 'readcar') {
  const reader = await CarReader.fromBytes(readFileSync(args[0]))
  const roots = await reader.getRoots()
  let blocks = 0
  for await (const { cid, bytes } of reader.blocks()) {
    const digest = await sha256.digest(bytes)
    if (!equal(digest.bytes, cid.multihash.bytes)) throw new Error(`block ${cid} does not match its CID`)
    await bs.put(cid, bytes)
    blocks++
  }
  const hash = createHash('sha256')
  const entry = await exporter(args[1] ? `${roots[0]}/${args[1]}` : roots[0], bs)
  for await (const chunk of entry.content()) hash.update(chunk)
  console.log(JSON.stringify({ roots: roots.map(String), blocks, sha256: hash.digest('hex') }))
} else {
  console.error(`unknown command ${cmd}`)
  process.exit(2)
}

async function writeCar (root, path) {
  const { writer, out } = CarWriter.create([root])
  const done = new Promise((resolve, reject) => Readable.from(out).pipe(createWriteStream(path)).on('finish', resolve).on('error', reject))
  for (const block of bs.written.values()) await writer.put(block)
  await writer.close()
  await done
}

function equal (a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i])
}
