/** Reads a child process's stdout as JSON lines, handing each parsed object to `onLine`; resolves at EOF. */
export async function readJsonLines<T>(stream: ReadableStream<Uint8Array>, onLine: (value: T) => void): Promise<void> {
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of stream) {
    buffered += decoder.decode(chunk, { stream: true });
    const lines = buffered.split("\n");
    buffered = lines.pop()!;
    for (const line of lines) if (line !== "") onLine(JSON.parse(line) as T);
  }
}
