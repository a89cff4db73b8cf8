// Defining a restored domain in libvirt (restore vm --define on a libvirt restore point).
import { Libvirt, uuidString } from '../../protocols/libvirt/remote.js';
import { BulwarkError } from '../../util/errors.js';
import { restoredDomainXml } from './domain-xml.js';

export { restoredDomainXml };

/** Defines `xml` on `uri` (not started); an existing domain of that name or UUID is never touched. */
export async function defineDomain(uri: string, xml: string): Promise<{ name: string; uuid: string }> {
  const lv = await Libvirt.open(uri);
  try {
    const dom = await lv.define(xml).catch((err: unknown) => {
      const exists = /already exists/i.test((err as Error).message);
      throw new BulwarkError(exists ? 'usage' : 'failed', `cannot define the restored domain on ${uri}: ${(err as Error).message}`, {
        cause: err,
        hint: exists ? 'give it another name with --name, or leave out --keep-identity' : 'check the XML with --print-xml',
      });
    });
    return { name: dom.name, uuid: uuidString(dom.uuid) };
  } finally {
    await lv.close();
  }
}
