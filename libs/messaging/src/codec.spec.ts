import { decodeJson, encodeJson, encodeOkReply, RawJson } from './codec';

describe('encodeOkReply', () => {
  it('places a RawJson answer in the reply as it is, decoded by the caller like any other', () => {
    const text = '{"events": [{"position": 7, "event": {"id": "e1", "data": {"name": "a\\u00e9b"}}}], "headSeq": 9}';
    const bytes = encodeOkReply(new RawJson(text));
    expect(new TextDecoder().decode(bytes)).toBe(`{"ok":true,"value":${text}}`);
    expect(decodeJson(bytes)).toEqual({ ok: true, value: JSON.parse(text) });
  });

  it('encodes any other answer as JSON', () => {
    const value = { a: [1, 'two'], b: null };
    expect(encodeOkReply(value)).toEqual(encodeJson({ ok: true, value }));
    expect(decodeJson(encodeOkReply(undefined))).toEqual({ ok: true });
  });
});
