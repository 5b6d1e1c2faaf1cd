#include <openssl/sha.h>
/* JWT verification (StateroomServer/Auth/JWT.swift): keys from PEM, HMAC, EVP_DigestVerify, ECDSA
   signatures converted from JWS r||s to DER, constant-time compare, the error queue. */
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
