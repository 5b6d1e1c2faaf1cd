import Testing
import WireProtocol

@Suite struct HandshakeTests {
    @Test func acceptValueMatchesRFC6455Section1_3() {
        #expect(webSocketAccept(key: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        let key = Array("dGhlIHNhbXBsZSBub25jZQ==".utf8)
        #expect(key.withUnsafeBytes { webSocketAccept(key: $0) } == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    @Test func base64EncodingMatchesRFC4648Vectors() {
        let vectors = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==", "fooba": "Zm9vYmE=", "foobar": "Zm9vYmFy"]
        for (input, output) in vectors {
            #expect(base64Encode(Array(input.utf8)) == output)
        }
    }

    @Test(arguments: ["dGhlIHNhbXBsZSBub25jZQ==", "AAAAAAAAAAAAAAAAAAAAAA==", "+/+/+/+/+/+/+/+/+/+/+w=="])
    func keyOfSixteenBase64BytesIsValid(key: String) {
        #expect(Array(key.utf8).withUnsafeBytes { isValidWebSocketKey($0) })
    }

    @Test(arguments: ["", "dGhlIHNhbXBsZSBub25jZQ=", "dGhlIHNhbXBsZSBub25jZQ===", "dGhlIHNhbXBsZSBub25jZ===",
                      "dGhlIHNhbXBsZSBub25j*Q==", "dGhlIHNhbXBsZSBub25jZQAA", "Zm9vYmFy", "dGhlIHNhbXBsZSBub25jZ Q="])
    func keyThatIsNotSixteenBase64BytesIsInvalid(key: String) {
        #expect(!Array(key.utf8).withUnsafeBytes { isValidWebSocketKey($0) })
    }
}
